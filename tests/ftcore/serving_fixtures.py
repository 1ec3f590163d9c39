"""Model folders to serve in tests (the demo's tiny scratch causal LM, and a tiny classifier beside it), and what the
endpoint tests share: their serving config, endpoints served over real HTTP on 127.0.0.1, and readers of the error
body and /metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ftcore.models.prompting import Prompting, write_prompting
from ftcore.serving.config import ServeConfig
from ftcore.serving.server import serving
from tests.ftcore.pipeline_fixtures import prepare

TOKEN = "s3cret-token"


def causal_folder(root: Path) -> Path:
    """The demo's untrained base, recorded as trained on chats, so that the chat route serves it through its chat
    template (a folder without the record, and with only ftflow's default template, is refused chats)."""
    folder = prepare(root).base.base_path
    write_prompting(folder, Prompting(format="messages"))
    return folder


def classifier_folder(causal: Path, out: Path) -> Path:
    """A two-class sequence classifier with the causal model's tokenizer and shape, seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(causal)
    config.num_labels, config.id2label, config.label2id = 2, {0: "ham", 1: "spam"}, {"ham": 0, "spam": 1}
    tokenizer = AutoTokenizer.from_pretrained(causal)
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.architectures = ["LlamaForSequenceClassification"]
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


_MODELS: dict[str, Path] = {}


def serving_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The causal and classifier model folders, built once per test session (servers only read them), and a new
    `root` folder for the calling test module's request logs."""
    if not _MODELS:
        models = tmp_path_factory.mktemp("serving-models")
        causal = causal_folder(models)
        _MODELS.update(causal=causal, classifier=classifier_folder(causal, models / "classifier"))
    return {**_MODELS, "root": tmp_path_factory.mktemp("serving")}


def serve_cfg(root: Path, name: str, **fields) -> ServeConfig:
    """A serving config logging requests to `root/name.db`, with prompts limited to 64 tokens."""
    base = {"request_log": {"url": f"sqlite:///{root / name}.db"}, "limits": {"max_prompt_tokens": 64}}
    return ServeConfig.model_validate(base | fields)


@contextmanager
def causal_endpoint(folders: dict[str, Path]) -> Iterator[tuple[httpx.Client, ServeConfig]]:
    """The causal model served without a token, batching requests that arrive within 20 ms: a client and the config."""
    cfg = serve_cfg(folders["root"], "causal", batching={"max_wait_ms": 20})
    with serving(str(folders["causal"]), cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, cfg


@contextmanager
def classifier_endpoint(folders: dict[str, Path]) -> Iterator[httpx.Client]:
    """The classifier served with TOKEN: a client (that sends no token of itself)."""
    cfg = serve_cfg(folders["root"], "classifier")
    with serving(str(folders["classifier"]), cfg, token=TOKEN) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def api_error(response: httpx.Response, status: int) -> dict:
    """The documented error shape: the status and {"error": {"message", "type", "param", "code"}}."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def metric(client: httpx.Client, name: str) -> float:
    """A sample's value in the endpoint's /metrics (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def lora_version_folder(base: Path, out: Path, seed: int) -> Path:
    """A folder as the train stage writes a LoRA version of `base`: the merged weights at the top, the adapter in
    trained_adapter/, the tokenizer and the prompting record. The adapter's weights are random (seeded), so each
    seed answers differently."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    peft = get_peft_model(model, lora)
    peft.save_pretrained(out / "trained_adapter")
    peft.merge_and_unload().save_pretrained(out, safe_serialization=True)
    for file in base.iterdir():  # tokenizer, chat template, prompting.json
        if file.is_file() and not file.name.startswith(("model", "config", "generation_config")):
            shutil.copy2(file, out / file.name)
    return out


def other_base_folder(base: Path, out: Path, seed: int) -> Path:
    """A base of the same architecture and tokenizer as `base`, with other (seeded) weights."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base)).save_pretrained(out, safe_serialization=True)
    for file in base.iterdir():
        if file.is_file() and not file.name.startswith(("model", "config", "generation_config")):
            shutil.copy2(file, out / file.name)
    return out


def register(model: str, folder: Path) -> str:
    """A version of `model` registered from `folder` by a run of its own (a run keeps one model's files); its
    number."""
    from ftcore import tracking, versions

    run = tracking.start_pipeline_run("serving-test", "run", {"name": "serving-test"}, {})
    return versions.register_version(run, model, folder, tags={})


def logged_when(cfg: ServeConfig, count: int):
    """The request log once it holds `count` rows (the writer appends in the background)."""
    import time

    from ftcore.serving.request_log import RequestLog

    deadline = time.monotonic() + 30
    while len(rows := RequestLog(cfg.request_log.resolved_url()).read()) < count:
        assert time.monotonic() < deadline, f"{len(rows)} of {count} requests logged"
        time.sleep(0.1)
    return rows
