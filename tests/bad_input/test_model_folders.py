"""Model folders as users have them, damaged or not allowed as the recipe stands (`model.source: pretrained`):
`ftflow validate` and `ftflow run` exit 2 with one `error:` line naming the folder, the recipe field and the fix,
and no traceback; `run` refuses before any stage, except for what only loading shows (a tokenizer too large for
the embeddings, a pickle holding more than tensors), which the init stage refuses.

Each folder is a copy of a model-zoo folder (tests/models/zoo.py: shaped like a real download), damaged the way
downloads and hand-assembled folders go wrong. What loads is in tests/ftcore/test_model_folders.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.bad_input.harness import assert_user_error, invoke, published, write_recipe
from tests.models.zoo import folder

DEMO_DATA = Path(__file__).resolve().parents[2] / "data_recipes" / "demo" / "clinical_qa.jsonl"
SOURCE = {"type": "jsonl", "path": str(DEMO_DATA), "columns": {"prompt": "question", "completion": "answer"}}
# A configuration module that leaves a mark when it is imported: a folder's code must not run unless trusted.
CUSTOM_CONFIG = """\
from pathlib import Path

from transformers import MistralConfig

Path({marker!r}).touch()


class CustomConfig(MistralConfig):
    model_type = "ftflow_custom"
"""


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def _no_config(path: Path) -> None:
    (path / "config.json").unlink()


def _gguf_only(path: Path) -> None:
    for file in path.iterdir():
        file.unlink()
    (path / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(60))


def _hub_cache_root(path: Path) -> Path:
    """The Hugging Face cache's layout, with the recipe naming its top: the model is two folders down, in
    snapshots/<revision>/."""
    top = path.parent / "models--mistralai--Mistral-7B-v0.3"
    (top / "snapshots").mkdir(parents=True)
    shutil.move(str(path), str(top / "snapshots" / "0123abcd"))
    return top


def _a_file(path: Path) -> Path:
    return path / "config.json"


def _adapter_only(path: Path) -> None:
    for file in path.iterdir():
        file.unlink()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                          "base_model_name_or_path": "mistralai/Mistral-7B-v0.3"}))
    (path / "adapter_model.safetensors").write_bytes(b"")


def _config_not_json(path: Path) -> None:
    (path / "config.json").write_text('{"model_type": "mistral",\n  "hidden_size": 64,,\n}')


def _unknown_architecture(path: Path) -> None:
    _edit_config(path, model_type="ftflow_future_model", architectures=["FutureForCausalLM"])


def _needs_remote_code(path: Path) -> None:
    (path / "configuration_custom.py").write_text(CUSTOM_CONFIG.format(marker=str(path.parent / "code-ran")))
    _edit_config(path, model_type="ftflow_custom",
                 auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                           "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})


def _pickle_only(path: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()


def _missing_shard(path: Path) -> None:
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _no_weights(path: Path) -> None:
    (path / "model.safetensors").unlink()


def _lfs_pointer(path: Path) -> None:
    """A clone of a hub repo without git-lfs: each large file is a 130-byte text pointer."""
    (path / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n"
                                            f"oid sha256:{'0' * 64}\nsize 12345678\n")


def _no_tokenizer(path: Path) -> None:
    for file in path.glob("tokenizer*"):
        file.unlink()


def _not_a_gguf(path: Path) -> None:
    (path / "tiny.gguf").write_text("<html>Not Found</html>")  # a download that saved an error page


@dataclass(frozen=True)
class Case:
    damage: Callable[[Path], Path | None]  # damages the copied folder; returns what name_or_path names, if not it
    fragments: tuple[str, ...]  # besides the folder: the error must name it
    model: dict = field(default_factory=dict)  # the recipe's model fields besides source and name_or_path


CASES = {
    "no-config": Case(_no_config, ("model.name_or_path:", "has no config.json", "give the folder of a downloaded")),
    "gguf-only-folder": Case(_gguf_only, ("has no config.json", "it holds model-Q4_K_M.gguf",
                                          "set model.gguf_file")),
    "hub-cache-root": Case(_hub_cache_root, ("has no config.json", "give the model folder inside it",
                                             "snapshots/0123abcd")),
    "peft-adapter": Case(_adapter_only, ("it is a PEFT adapter", "give its base model (mistralai/Mistral-7B-v0.3)")),
    "config-not-json": Case(_config_not_json, ("config.json is not valid JSON (line 2", "download it again")),
    "unknown-architecture": Case(_unknown_architecture, ("model.name_or_path:", "model_type 'ftflow_future_model'",
                                                         "upgrade transformers")),
    "needs-remote-code": Case(_needs_remote_code, ("model.trust_remote_code:", "needs its own Python code",
                                                   "configuration_custom.CustomConfig",
                                                   "model.trust_remote_code: true")),
    "pickle-only": Case(_pickle_only, ("model.allow_pickle:", "only as a pickle (pytorch_model.bin)",
                                       "can run code", "convert it to safetensors", "model.allow_pickle: true")),
    "missing-shard": Case(_missing_shard, ("lacks 1 of the 2 weight shards", "model-00002-of-00002.safetensors",
                                           "download is incomplete")),
    "no-weights": Case(_no_weights, ("has config.json but no weights", "download the model's weight files")),
    "lfs-pointer": Case(_lfs_pointer, ("model.safetensors is a Git LFS pointer", "git lfs pull")),
    "no-tokenizer": Case(_no_tokenizer, ("has no tokenizer files", "copy in the tokenizer files")),
    "gguf-file-absent": Case(lambda p: None, ("model.gguf_file: no model.Q8_0.gguf in", "nor any other .gguf file",
                                              "give the folder the file was downloaded into"),
                             model={"gguf_file": "model.Q8_0.gguf"}),
    "gguf-file-misnamed": Case(_not_a_gguf, ("model.gguf_file: no model.Q8_0.gguf in",
                                             "name one of the .gguf files there: tiny.gguf"),
                               model={"gguf_file": "model.Q8_0.gguf"}),
    "gguf-file-not-gguf": Case(_not_a_gguf, ("model.gguf_file:", "tiny.gguf is not a GGUF file",
                                             "download it again"), model={"gguf_file": "tiny.gguf"}),
    "a-file-not-a-folder": Case(_a_file, ("config.json is a file, not a model folder",)),
}


def _damaged(case: Case, tmp_path: Path, family: str = "mistral") -> tuple[Path, str]:
    """(the folder the error must name, name_or_path as the recipe gives it)."""
    path = Path(shutil.copytree(folder(family), tmp_path / "downloads" / family))
    named = case.damage(path) or path
    return (named if named.is_dir() else path), str(named)


def _recipe(tmp_path: Path, name_or_path: str, **model) -> Path:
    return write_recipe(tmp_path, data={"sources": [SOURCE]},
                        model={"source": "pretrained", "name_or_path": name_or_path, **model})


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_validate_refuses_the_folder_in_one_line_naming_it_and_the_fix(case: Case, tmp_path, capfd):
    path, name_or_path = _damaged(case, tmp_path)
    recipe = _recipe(tmp_path, name_or_path, **case.model)
    error = assert_user_error(invoke(["validate", recipe], capfd), str(path), *case.fragments)
    assert error.startswith(f"error: {recipe}: ")
    assert not (tmp_path / "downloads" / "code-ran").exists()  # the folder's code never ran


@pytest.mark.parametrize("name", ["no-config", "needs-remote-code", "pickle-only"])
def test_run_refuses_the_folder_before_any_stage(name, tmp_path, capfd, ftflow_home):
    case = CASES[name]
    path, name_or_path = _damaged(case, tmp_path)
    recipe = _recipe(tmp_path, name_or_path, **case.model)
    assert_user_error(invoke(["run", recipe, "--until", "init"], capfd), str(path), *case.fragments)
    assert not (ftflow_home / "artifacts").exists()  # nothing ran


def test_a_gguf_export_the_family_cannot_have_is_refused_before_training(tmp_path, capfd):
    recipe = write_recipe(tmp_path, data={"sources": [SOURCE]}, deploy={"exports": ["int8", "gguf_q8_0"]},
                          model={"source": "pretrained", "name_or_path": str(folder("gemma2"))})
    assert_user_error(invoke(["validate", recipe], capfd), "deploy.exports: gguf_q8_0 does not fit",
                      "model type 'gemma2' has no GGUF tensor mapping here (written: llama, mistral, qwen2, qwen3)",
                      "convert it with llama.cpp's convert_hf_to_gguf.py")


def test_trust_remote_code_lets_validate_read_a_folder_that_needs_its_code(tmp_path, capfd):
    _, name_or_path = _damaged(CASES["needs-remote-code"], tmp_path)
    recipe = _recipe(tmp_path, name_or_path, trust_remote_code=True)
    outcome = invoke(["validate", recipe], capfd)
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "downloads" / "code-ran").exists()  # trusted: its configuration module was imported


def test_allow_pickle_lets_validate_accept_pickled_weights(tmp_path, capfd):
    _, name_or_path = _damaged(CASES["pickle-only"], tmp_path)
    outcome = invoke(["validate", _recipe(tmp_path, name_or_path, allow_pickle=True)], capfd)
    assert outcome.code == 0, outcome.stderr


@pytest.mark.parametrize(("model", "fragment"), [
    ({"source": "scratch", "gguf_file": "tiny.gguf"}, "model: gguf_file: only for source: pretrained"),
    ({"source": "scratch", "allow_pickle": True}, "model: allow_pickle: only for source: pretrained"),
    ({"source": "pretrained", "name_or_path": "x", "gguf_file": "tiny.bin"},
     "model.gguf_file: 'tiny.bin' is not a .gguf file name"),
    ({"source": "pretrained", "name_or_path": "x", "gguf_file": "../elsewhere/tiny.gguf"},
     "model.gguf_file: '../elsewhere/tiny.gguf': give the file's name inside name_or_path"),
    ({"source": "pretrained", "name_or_path": "/models/tiny.gguf", "gguf_file": "tiny.gguf"},
     "give the file either as name_or_path or as gguf_file"),
    ({"source": "pretrained", "name_or_path": "/no/such/model"}, "model.name_or_path: no such folder /no/such/model"),
])
def test_model_fields_that_contradict_each_other_are_refused(model, fragment, tmp_path, capfd):
    recipe = write_recipe(tmp_path, data={"sources": [SOURCE]}, model=model)
    assert_user_error(invoke(["validate", recipe], capfd), fragment)


# ---------------------------------------------------------------------------------------------------------------
# What only loading shows: refused by the init stage


@pytest.mark.usefixtures("prefect_harness")
def test_a_tokenizer_larger_than_the_embeddings_is_refused_by_init(tmp_path, capfd, ftflow_home):
    """Mistral v0.3's tokenizer (32,768 tokens) copied into a folder of Mixtral weights (32,000 rows): ids from
    32,000 up would index past the embedding table."""
    path = Path(shutil.copytree(folder("mixtral"), tmp_path / "downloads" / "mixtral"))
    for file in folder("mistral").glob("tokenizer*"):
        shutil.copy(file, path / file.name)
    outcome = invoke(["run", _recipe(tmp_path, str(path)), "--until", "init"], capfd)
    assert_user_error(outcome, "stage init failed", f"model.name_or_path: the tokenizer in {path} has 32768 tokens",
                      "embedding table has 32000 rows", "use the tokenizer files downloaded with these weights")
    assert published(ftflow_home, "init") == []


class _Payload:
    """What a malicious pickle holds: a call, here of open(), which creates a file when the pickle is loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.usefixtures("prefect_harness")
def test_pickled_weights_holding_code_are_refused_even_when_pickles_are_allowed(tmp_path, capfd, ftflow_home):
    from safetensors.torch import load_file

    path = Path(shutil.copytree(folder("mistral"), tmp_path / "downloads" / "mistral"))
    marker = tmp_path / "code-ran"
    torch.save({**load_file(path / "model.safetensors"), "payload": _Payload(marker)}, path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    outcome = invoke(["run", _recipe(tmp_path, str(path), allow_pickle=True), "--until", "init"], capfd)
    assert_user_error(outcome, "stage init failed", "model.allow_pickle:", str(path), "hold more than tensors",
                      "a call of io.open", "get the model's safetensors weights")
    assert not marker.exists()
    assert published(ftflow_home, "init") == []


def test_plan_needs_only_the_folders_config(tmp_path, capfd):
    """Planning reads config.json alone, so a model can be planned before its weights are downloaded."""
    path, name_or_path = _damaged(CASES["no-weights"], tmp_path)
    _no_tokenizer(path)
    outcome = invoke(["plan", _recipe(tmp_path, name_or_path), "--json"], capfd)
    assert outcome.code == 0, outcome.stderr
    assert json.loads(outcome.stdout)["model"]["architecture"] == "MistralForCausalLM"
