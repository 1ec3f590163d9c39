"""A model folder that ships its own code (config.json's auto_map, for a model_type transformers lacks), allowed by
the recipe's `model.trust_remote_code: true`, goes through every stage after init too: each loads it again with its
code (`runs_own_code`), from the folder the train stage writes with the code in it to a registered version served,
inspected and exported. Its refusal when the recipe does not allow it is in tests/bad_input/test_model_folders.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ftcore.errors import UserError
from ftcore.models.config import LoraMethod, ModelConfig
from ftcore.models.init import InitJob, init_stage
from ftcore.models.load import load_trained, runs_own_code
from ftcore.recipe import load_recipe
from ftcore.serving.source import model_source
from ftcore.training.config import TrainConfig
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES
from tests.ftcore.pipeline_fixtures import demo_dataset
from tests.models.zoo import folder

CONFIGURATION = """\
from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tinyremote"
"""
CODE_FILES = ("configuration_tinyremote.py", "modeling_tinyremote.py")
PROMPT = "Question: What does MI stand for?\nAnswer:"
MODELING = """\
from transformers import LlamaForCausalLM

from .configuration_tinyremote import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
"""


def remote_code_folder(path: Path) -> Path:
    """A tiny Llama 3 (the zoo's weights and tokenizer) as a release of an architecture transformers lacks: its
    config.json names model_type `tinyremote` and, in auto_map, the classes in the folder's own modules."""
    shutil.copytree(folder("llama3"), path)
    (path / "configuration_tinyremote.py").write_text(CONFIGURATION)
    (path / "modeling_tinyremote.py").write_text(MODELING)
    config = json.loads((path / "config.json").read_text())
    config |= {"model_type": "tinyremote", "architectures": ["TinyRemoteForCausalLM"],
               "auto_map": {"AutoConfig": "configuration_tinyremote.TinyRemoteConfig",
                            "AutoModelForCausalLM": "modeling_tinyremote.TinyRemoteForCausalLM"}}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return demo_dataset(load_recipe(DEMO_RECIPE, TINY_OVERRIDES), tmp_path_factory.mktemp("data"))


def _init(dataset, path: Path, out: Path):
    cfg = ModelConfig(source="pretrained", name_or_path=str(path), trust_remote_code=True)
    return init_stage(InitJob(model=cfg, method=LoraMethod(r=2), dataset=dataset), out)


def _answer(model, tokenizer) -> str:
    """A few greedy tokens after the prompt: the model generates with its own class."""
    assert type(model).__name__ == "TinyRemoteForCausalLM"
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(tokens[0, inputs["input_ids"].shape[1]:])


def test_a_folder_with_its_own_code_trains_registers_serves_and_exports_when_the_recipe_trusts_it(tmp_path,
                                                                                                   dataset):
    from ftcore import tracking, versions
    from ftcore.deploy.export import VersionModel, load_export, write_export
    from ftcore.models.inspect import inspect_model

    path = remote_code_folder(tmp_path / "tinyremote")
    base = _init(dataset, path, tmp_path / "init")
    assert base.base_path == path and runs_own_code(path)
    trained = train_stage(TrainJob(base=base, dataset=dataset,
                                   train=TrainConfig(max_steps=3, batch_size=4, logging_steps=1, save_steps=3)),
                          tmp_path / "train")
    # The merged model carries the code it loads with, so every later load finds it beside the weights.
    model_dir = trained.model_path
    assert all((model_dir / name).is_file() for name in CODE_FILES) and runs_own_code(model_dir)
    assert _answer(*load_trained(base.base_path))  # the evaluate stage's `base`: the folder itself, in place

    run = tracking.start_pipeline_run("remote-code", "run", {}, {})
    version = versions.register_version(run, "tinyremote", model_dir, tags={})
    uri = f"models:/tinyremote/{version}"
    engine = model_source(uri).load(version)  # what `ftflow serve` loads
    served = _answer(engine.model, engine.tokenizer)
    report = inspect_model(uri)
    assert (report.architecture, report.registered) == ("TinyRemoteForCausalLM", f"tinyremote/{version}")

    registered, export = Path(report.path), tmp_path / "export"
    write_export("merged", VersionModel.read(registered), export, f"tinyremote/{version}")
    assert all((export / name).is_file() for name in CODE_FILES)
    assert _answer(*load_export(export)) == served
    # A folder named outside a recipe runs no code, even one ftflow wrote: no recipe vouches for it.
    with pytest.raises(UserError, match=r"sets model\.trust_remote_code: true; serve the version registered"):
        model_source(str(registered))
