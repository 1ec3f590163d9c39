"""`ftflow inspect MODEL` (ftcore/models/inspect.py): a model folder, a GGUF file or a registered version, described
from its config alone.

Every family of the model zoo is inspected and checked against the model itself, loaded with its real weights: the
family, the exact parameter count (tied weights once), the dtype, the licence of its card, its chat template, and
the default LoRA targets against the modules PEFT's own `all-linear` wraps. The rest: a folder whose weights are
gone or cut short, a vision-language config, a GGUF file written from a zoo folder and a vocabulary-only GGUF of
Llama 3 8B's shape, a registered version by alias and by number, `--json` through the CLI, and the errors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from functools import cache

import pytest
import transformers
from typer.testing import CliRunner

from flows.cli import app
from ftcore.errors import UserError
from ftcore.models.inspect import card_licence, default_target_modules, inspect_model
from tests.conftest import REPO
from tests.models.zoo import BY_NAME, FAMILIES, VOCAB_DIR, Family, folder, templates_available, vocabularies_fetched

pytestmark = pytest.mark.skipif(not vocabularies_fetched(),
                                reason="the zoo's vocabularies are not fetched (python -m tests.models.zoo)")

runner = CliRunner()


@cache
def loaded(name: str) -> tuple[str, int, list[str]]:
    """(class, parameter count, the last names of what PEFT's all-linear LoRA wraps) of the family's model with its
    real weights: loaded with the Auto class the zoo saved it with; an encoder, which ftflow trains as a
    classifier, is wrapped as its sequence classifier."""
    from peft import LoraConfig, get_peft_model

    family = BY_NAME[name]
    auto = (transformers.AutoModelForSequenceClassification if family.head
            else transformers.AutoModelForCausalLM if family.kind == "decoder" else transformers.AutoModelForMaskedLM)
    model = auto.from_pretrained(folder(name))
    architecture, count = type(model).__name__, sum(p.numel() for p in model.parameters())
    trained = model if family.kind == "decoder" else \
        transformers.AutoModelForSequenceClassification.from_pretrained(folder(name))
    task = "SEQ_CLS" if type(trained).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"
    with warnings.catch_warnings():  # PEFT's notes on Conv1D and Mixtral's experts
        warnings.simplefilter("ignore")
        tuner = get_peft_model(trained, LoraConfig(target_modules="all-linear", task_type=task)).base_model
    targets = {path.rsplit(".", 1)[-1] for path in tuner.targeted_module_names}
    # a weight targeted as a parameter (Mixtral's fused experts and router): MODULE.PARAMETER
    targets |= {".".join(path.split(".")[-2:]) for path in tuner.targeted_parameter_names}
    return architecture, count, sorted(targets)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_every_family_is_reported_as_the_loaded_model_is(family: Family):
    report = inspect_model(folder(family.name))
    architecture, count, peft_targets = loaded(family.name)
    assert report.model_type == getattr(transformers, family.config_class).model_type
    assert report.architecture == architecture
    assert report.parameters == count
    assert report.decoder == (family.kind == "decoder") and report.modality == "text"
    assert report.dtype == family.dtype
    assert report.licence == family.licence
    assert report.chat_template == (family.chat_template is not None and templates_available())
    assert report.target_modules["all-linear"] == peft_targets
    assert report.config_vocab_size is not None and report.tokenizer_vocab_size is not None
    assert report.context_length is not None
    # the rule table's verdicts, as support.py gives them: an encoder generates nothing
    assert report.supported("classification")
    assert bool(report.supported("sft")) == (family.kind == "decoder")


def test_default_target_modules_of_a_config():
    config = transformers.AutoConfig.from_pretrained(folder("phi3"))
    assert default_target_modules(config) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert default_target_modules(transformers.AutoConfig.from_pretrained(folder("gpt2"))) == \
        ["c_attn", "c_fc", "c_proj"]  # Conv1D layers, the tied output head left out


def test_adapter_and_ia3_defaults_are_the_ones_ftflow_applies():
    llama = inspect_model(folder("llama3")).target_modules
    assert llama["adapter"] == ["down_proj", "o_proj"]
    assert llama["ia3"] == ["down_proj", "k_proj", "v_proj"] and llama["ia3_feedforward"] == ["down_proj"]
    assert inspect_model(folder("mixtral")).target_modules["adapter"] == ["mlp", "o_proj"]  # the whole MoE block


def test_context_sliding_windows_and_vocabularies():
    gpt2, gemma3, mistral, qwen2, neox = (inspect_model(folder(n)) for n in
                                          ("gpt2", "gemma3", "mistral", "qwen2", "gpt_neox"))
    assert (gpt2.context_length, gpt2.context_key) == (512, "n_positions")
    assert (gemma3.sliding_window, gemma3.sliding_layers, gemma3.num_layers) == (32, 1, 2)
    assert (mistral.sliding_window, mistral.sliding_layers) == (32, None)  # every layer
    assert qwen2.sliding_window is None  # Qwen2 keeps its window off (use_sliding_window: false)
    assert qwen2.vocab_note is None and qwen2.config_vocab_size == 151936
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder("gpt_neox"))
    assert neox.tokenizer_vocab_size == len(tokenizer) < neox.config_vocab_size
    assert f"{neox.config_vocab_size - len(tokenizer)} rows no token uses" in neox.vocab_note


def test_no_weight_is_read(tmp_path):
    """The folder's safetensors cut short, then gone: inspect reports the same model."""
    original = folder("mistral")
    copy = tmp_path / "mistral"
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    (copy / "model.safetensors").write_bytes((original / "model.safetensors").read_bytes()[:1000])
    expected = inspect_model(original).to_dict()
    assert {**inspect_model(copy).to_dict(), "source": "", "path": ""} == {**expected, "source": "", "path": ""}
    (copy / "model.safetensors").unlink()
    assert inspect_model(copy).parameters == expected["parameters"]


def test_a_chat_template_in_tokenizer_config_and_licences_from_the_card(tmp_path):
    copy = tmp_path / "gpt2"
    shutil.copytree(folder("gpt2"), copy, ignore=shutil.ignore_patterns("*.safetensors"))
    settings = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": "{{ messages }}"}))
    (copy / "README.md").write_text("---\nlicense: other\nlicense_name: llama3\n---\n# a card\n")
    report = inspect_model(copy)
    assert (report.chat_template, report.chat_template_source) == (True, "tokenizer_config.json")
    assert report.licence == "other (llama3)"
    (copy / "README.md").write_text("# a card without front matter\n\nlicense: mit\n")
    assert card_licence(copy) == "unknown"
    (copy / "README.md").write_text("---\nlicense:\n- apache-2.0\n- mit\n---\n")
    assert card_licence(copy) == "apache-2.0, mit"
    (copy / "README.md").unlink()
    assert card_licence(copy) == "unknown"


def test_a_vision_language_config(tmp_path):
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=2, image_size=32, patch_size=8),
        text_config=transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, vocab_size=300, max_position_embeddings=256),
        image_token_index=299, architectures=["LlavaForConditionalGeneration"])
    config.save_pretrained(tmp_path)  # config.json alone: no weights, no tokenizer
    report = inspect_model(tmp_path)
    model = transformers.LlavaForConditionalGeneration(config)
    assert report.parameters == sum(p.numel() for p in model.parameters())
    assert (report.modality, report.architecture) == ("vision-language", "LlavaForConditionalGeneration")
    assert (report.context_length, report.config_vocab_size, report.tokenizer_vocab_size) == (256, 300, None)
    vision = report.vision
    assert sum(vision.parts.values()) == report.parameters
    assert vision.parts["vision_tower"] == sum(p.numel() for p in model.model.vision_tower.parameters())
    assert (vision.family, vision.image_size, vision.patch_size) == ("clip_vision_model", 32, 8)
    assert vision.processor is None and vision.image_tokens is None
    assert vision.processor_note == "no processor_config.json or preprocessor_config.json in the folder"


# The shapes recipe's scratch models (tests/ftcore/test_image_text.py: 32-pixel images or tiles, 8-pixel patches):
# LLaVA sees each image resized whole, one token per patch; Idefics3 cuts the largest image it takes (64 pixels a side,
# max_tiles 2) into 2 x 2 tiles and the downsized whole, 2 x 2 patches per token.
VISION_FOLDERS = {"llava": ("LlavaProcessor", 16, None, 1), "idefics3": ("Idefics3Processor", 20, 4, 5)}


@pytest.mark.parametrize("architecture", VISION_FOLDERS)
def test_a_vision_language_folder_shows_its_parts_and_image_tokens(tmp_path, architecture):
    from ftcore.models.vision import part_modules
    from tests.ftcore.test_image_text import prepared_shapes

    _, _, base = prepared_shapes(tmp_path, architecture)
    report = inspect_model(base.base_path)
    model = transformers.AutoModelForImageTextToText.from_pretrained(base.base_path)
    assert report.parameters == sum(p.numel() for p in model.parameters())
    vision, parts = report.vision, part_modules(model)
    for part in ("vision_tower", "projector"):
        assert vision.parts[part] == sum(p.numel() for p in model.get_submodule(parts[part]).parameters())
    assert sum(vision.parts.values()) == report.parameters  # the language model with its output head
    assert (vision.image_size, vision.patch_size) == (32, 8)
    assert (vision.processor, vision.image_tokens, vision.tokens_per_tile, vision.max_tiles) == \
        VISION_FOLDERS[architecture]
    assert report.supported("vision_language") == [m for m in report.methods["vision_language"] if m != "prefix"]
    assert not any(report.supported(objective) for objective in report.methods if objective != "vision_language")
    # all-linear on the language model alone, as init applies it with train.vision's defaults
    assert report.target_modules["all-linear"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                   "v_proj"]
    result = runner.invoke(app, ["inspect", str(base.base_path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    processor, tokens, per_tile, tiles = VISION_FOLDERS[architecture]
    assert (f"image tokens {per_tile} per tile, up to {tiles} tiles ({tokens} tokens) per image ({processor})"
            if per_tile else f"image tokens {tokens} per image, each resized whole ({processor})") in text
    assert "is a vision-language model, and objective sft trains on text only" in text


def test_a_gguf_file(tmp_path):
    from tests.ftcore.gguf_writer import write_gguf

    gguf = write_gguf(folder("smollm"), tmp_path / "smollm.Q8_0.gguf", quantization="Q8_0")
    shutil.copy(folder("smollm") / "README.md", tmp_path)  # the card of the repository the file came from
    report = inspect_model(gguf)
    _, count, _ = loaded("smollm")
    assert (report.format, report.model_type, report.architecture) == ("gguf", "llama", "LlamaForCausalLM")
    assert report.parameters == count  # tied embeddings: the file has no output.weight
    assert (report.dtype, report.tokenizer_vocab_size, report.config_vocab_size) == ("Q8_0", 49152, 49152)
    assert (report.chat_template, report.chat_template_source) == (templates_available(),
                                                                  "tokenizer.chat_template" if templates_available()
                                                                  else None)
    assert report.licence == BY_NAME["smollm"].licence
    assert report.target_modules["all-linear"] == loaded("smollm")[2]


def test_a_vocabulary_only_gguf_of_llama_3_8b_is_read_from_its_header():
    """llama.cpp's vocabulary file of Llama 3 holds Llama 3 8B's hyperparameters and no tensor: 8B parameters
    counted from the header alone, with the embeddings tied as transformers ties them for a file without
    output.weight (Llama 3 8B's own 8,030,261,248 less its 128,256 x 4,096 output head)."""
    report = inspect_model(VOCAB_DIR / "llama-bpe.gguf")
    assert report.parameters == 8_030_261_248 - 128_256 * 4_096
    assert (report.context_length, report.config_vocab_size, report.tokenizer_vocab_size) == (8192, 128256, 128256)
    assert (report.dtype, report.chat_template, report.licence) == ("F16", False, "unknown")


def test_a_registered_version_by_alias_and_by_number():
    from ftcore import tracking, versions

    run = tracking.start_pipeline_run("inspect", "run", {}, {})
    version = versions.register_version(run, "tiny-mistral", folder("mistral"), tags={})
    versions.set_alias("tiny-mistral", versions.CHAMPION, version)
    by_alias = inspect_model("models:/tiny-mistral@champion")
    assert by_alias.registered == f"tiny-mistral/{version}"
    assert by_alias.parameters == loaded("mistral")[1] and by_alias.licence == "apache-2.0"
    assert inspect_model(f"models:/tiny-mistral/{version}").path == by_alias.path
    with pytest.raises(UserError, match="has no version with alias 'challenger'"):
        inspect_model("models:/tiny-mistral@challenger")


def test_json_through_the_cli():
    result = runner.invoke(app, ["inspect", str(folder("qwen2_classifier")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["architecture"] == "Qwen2ForSequenceClassification"
    assert report["parameters"] == loaded("qwen2_classifier")[1]
    assert report["methods"]["classification"]["prompt"].startswith("prompt passes embeddings")
    assert report["methods"]["sft"]["lora"] is None
    assert "score" not in report["target_modules"]["all-linear"]  # the classifier's head is trained whole


def test_the_table_through_the_cli():
    result = runner.invoke(app, ["inspect", str(folder("bert"))])
    assert result.exit_code == 0, result.output
    assert "bert (BertForMaskedLM): encoder, text" in result.output
    assert f"{loaded('bert')[1]:,}" in result.output
    assert "generates text, and bert is an encoder" in result.output


def test_errors_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "config.json").write_text('{"model_type": "not-a-model", "auto_map": {}}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama",')
    (tmp_path / "notes.txt").write_text("not a model")
    cases = {
        str(tmp_path / "nope"): "no such folder or file",
        str(tmp_path / "empty"): "has no config.json, so it is not a model folder",
        str(tmp_path / "unknown"): "model_type 'not-a-model', an architecture transformers",
        str(tmp_path / "broken"): "config.json is not valid JSON (line 1",
        str(tmp_path / "notes.txt"): "is a file but not a GGUF file",
        "models:/no-such-model@champion": "registered model 'no-such-model' has no version with alias 'champion'",
        "models:/no-such-model/3": "registered model 'no-such-model' has no version 3",
        "models:/a@b@c": "is neither models:/NAME@ALIAS nor models:/NAME/VERSION",
    }
    for model, message in cases.items():
        result = runner.invoke(app, ["inspect", model])
        assert result.exit_code == 2, (model, result.output)
        assert result.output.startswith("error: MODEL: ") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_inspect_imports_neither_prefect_nor_mlflow_for_a_folder():
    code = ("import sys; from typer.testing import CliRunner; from flows.cli import app; "
            f"r = CliRunner().invoke(app, ['inspect', {str(folder('gpt2'))!r}, '--json']); "
            "print(r.exit_code, 'prefect' in sys.modules, 'mlflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split()[-3:] == ["0", "False", "False"], done.stderr[-2000:]
