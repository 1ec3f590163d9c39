"""Model folders as users have them load as the base of a run (`model.source: pretrained`): a sharded checkpoint, a
GGUF file, pickled weights the recipe allows, a bfloat16 release, a folder whose config names code that
transformers does not need. Their refusals are in tests/bad_input/test_model_folders.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ftcore.models.config import LoraMethod, ModelConfig, QLoraMethod
from ftcore.models.folders import pretrained_source
from ftcore.models.init import InitJob, init_stage
from ftcore.models.load import load_model, load_tokenizer
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES
from tests.ftcore.gguf_writer import tiny_llama_folder, write_gguf
from tests.ftcore.pipeline_fixtures import demo_dataset
from tests.models.zoo import folder

DEMO_DATA = Path(__file__).resolve().parents[2] / "data_recipes" / "demo" / "clinical_qa.jsonl"
PROMPT = "Question: What does MI stand for?\nAnswer:"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The demo data, collected and cleaned once: what the init stage reads."""
    return demo_dataset(load_recipe(DEMO_RECIPE, TINY_OVERRIDES), tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [f"{row['question']} {row['answer']}" for row in map(json.loads, DEMO_DATA.read_text().splitlines())]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, texts) -> Path:
    """A Llama folder with a small vocabulary, the source of the GGUF files."""
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny") / "source", texts)


def _init(dataset, out: Path, **model):
    cfg = ModelConfig(source="pretrained", **model)
    return init_stage(InitJob(model=cfg, method=LoraMethod(r=2), dataset=dataset), out)


def _copy(family: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder(family), tmp_path / family))


def _logits(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_a_sharded_safetensors_checkpoint_loads_as_the_base_in_place(tmp_path, dataset):
    original = load_model(folder("mistral"))
    sharded = tmp_path / "sharded"
    original.save_pretrained(sharded, max_shard_size="2MB")
    load_tokenizer(folder("mistral")).save_pretrained(sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (sharded / "model.safetensors").exists()

    base = _init(dataset, tmp_path / "init", name_or_path=str(sharded))
    assert base.base_path == sharded  # referenced in place, not copied
    tokenizer = load_tokenizer(sharded)
    assert torch.equal(_logits(load_model(sharded), tokenizer), _logits(original, tokenizer))


def test_a_bfloat16_folder_loads_in_float32_on_a_cpu_and_a_callers_dtype_wins(tmp_path):
    path = folder("mistral")
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    expected = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # a GPU keeps the checkpoint's
    assert load_model(path).dtype == expected
    assert load_model(path, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_qlora_still_loads_a_bfloat16_folder_in_4_bits_with_its_own_dtype(tmp_path):
    import bitsandbytes as bnb

    from ftcore.models.peft_methods import load_base

    model = load_base(folder("mistral"), QLoraMethod())
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert model.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.parametrize(("quantization", "tolerance"), [("F32", 0.0), ("Q8_0", 0.05)])
def test_a_gguf_file_is_dequantised_into_a_safetensors_base_that_answers_like_the_source(
    tmp_path, dataset, texts, tiny_llama, quantization, tolerance
):
    source = tiny_llama
    gguf = write_gguf(source, tmp_path / "downloads" / f"tiny-{quantization}.gguf", quantization)

    base = _init(dataset, tmp_path / "init", name_or_path=str(gguf))  # the file itself as name_or_path
    assert base.base_path == tmp_path / "init" / "base"
    assert sorted(p.name for p in base.base_path.glob("*.safetensors")) == ["model.safetensors"]
    model, tokenizer = load_model(base.base_path), load_tokenizer(base.base_path)
    reference, reference_tokenizer = load_model(source), load_tokenizer(source)
    text = texts[0]
    assert tokenizer(text).input_ids == reference_tokenizer(text).input_ids  # the file's tokenizer, rebuilt
    rows = reference.get_input_embeddings().weight.shape[0]
    # transformers' GGUF tokenizer adds GPT-2's <|endoftext|> as unknown token; the base got a row for it
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) >= rows
    ours, theirs = _logits(model, reference_tokenizer, text)[..., :rows], _logits(reference, reference_tokenizer, text)
    assert (ours - theirs).abs().max().item() <= tolerance * theirs.abs().max().item()


def test_gguf_file_names_the_file_inside_a_folder(tmp_path, tiny_llama):
    gguf = write_gguf(tiny_llama, tmp_path / "repo" / "tiny.gguf")
    inside = pretrained_source(ModelConfig(source="pretrained", name_or_path=str(gguf.parent), gguf_file=gguf.name))
    itself = pretrained_source(ModelConfig(source="pretrained", name_or_path=str(gguf)))
    assert inside == itself and inside.converted and inside.label == str(gguf)


def test_pickled_weights_load_when_the_recipe_allows_them_and_become_safetensors(tmp_path, dataset):
    path = _copy("mistral", tmp_path)
    original = load_model(path)
    torch.save(original.state_dict(), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()

    base = _init(dataset, tmp_path / "init", name_or_path=str(path), allow_pickle=True)
    assert base.base_path == tmp_path / "init" / "base"
    assert (base.base_path / "model.safetensors").is_file() and not list(base.base_path.glob("*.bin"))
    tokenizer = load_tokenizer(path)
    assert torch.equal(_logits(load_model(base.base_path), tokenizer), _logits(original, tokenizer))


def test_pickled_weights_are_read_with_the_weights_only_loader(tmp_path, monkeypatch):
    path = _copy("mistral", tmp_path)
    torch.save(load_model(path).state_dict(), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_model(path, pickle=True)
    assert calls and all(weights_only is True for weights_only in calls)


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_an_auto_map_on_an_architecture_transformers_knows_loads_its_class_and_runs_no_code(tmp_path, trusted):
    """Releases such as Phi-3's keep auto_map in config.json from before transformers had the model: transformers'
    own class loads it and the folder's code never runs. With trust_remote_code on too: every stage after init
    loads the folder without its code (`runs_own_code`), so init does, and all of them load the same class."""
    path = _copy("mistral", tmp_path)
    marker = tmp_path / "code-ran"
    for module in ("configuration_custom", "modeling_custom"):
        (path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))

    source = pretrained_source(ModelConfig(source="pretrained", name_or_path=str(path), trust_remote_code=trusted))
    assert not source.converted and not source.own_code
    assert type(load_model(path, source.own_code)).__name__ == "MistralForCausalLM"
    assert not marker.exists()


def test_plan_reads_a_gguf_files_config_from_its_metadata(tmp_path, tiny_llama):
    from ftcore.planning.shape import model_shape

    gguf = write_gguf(tiny_llama, tmp_path / "tiny.gguf")
    shape = model_shape(ModelConfig(source="pretrained", name_or_path=str(gguf)))
    reference = load_model(tiny_llama)
    assert (shape.architecture, shape.num_kv_heads) == ("LlamaForCausalLM", 2)
    assert shape.total_params == sum(p.numel() for p in reference.parameters())


def test_models_loaded_by_several_threads_at_once_keep_their_output_layer_tied():
    """transformers patches PreTrainedModel.tie_weights (and torch's default dtype) while it builds a model and puts
    them back after: unserialised, threads loading at once put back each other's patch, tie_weights stays a no-op for
    the process and a tied output layer loaded afterwards stays on the meta device (reproduced with 8 loads on 4
    threads, 5 times, before MODEL_BUILD_LOCK). A server's alias watcher and its checks load in threads."""
    from concurrent.futures import ThreadPoolExecutor

    gpt2 = folder("gpt2")
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            loaded = list(pool.map(lambda _: load_model(gpt2), range(8)))
    model = load_model(gpt2)
    for m in [*loaded, model]:
        assert m.lm_head.weight.device.type == "cpu"
        assert m.lm_head.weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
