"""The ONNX export (`--kind onnx`): torch.onnx's graph of the merged model run by ONNX Runtime against the float32
model on a registered version of the tiny demo model: its logits, greedy answers, the MLflow pyfunc model, and the
kinds of model it refuses."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ftcore import tracking, versions
from ftcore.deploy import export, onnx_export
from ftcore.deploy.export import export_version, fetch_export, load_export, unavailable
from ftcore.deploy.quantize import float32_bytes
from ftcore.errors import UserError
from ftcore.models.config import PrefixMethod
from ftcore.models.generate import generate
from ftcore.models.load import load_trained
from tests.ftcore.export_fixtures import heldout_rows, register


def test_onnx_runtime_runs_the_graph_to_the_float32_logits_and_answers(lora, tmp_path):
    import mlflow

    _, trained = lora
    run_id, version = register(trained.model_path)
    test = heldout_rows(lora)
    report = export_version(trained.model_path, "exp", version, run_id, ["onnx"], test, tolerance=0.05)

    check = report.checks["onnx"]
    # Measured: max |logit difference| about 1e-5 (float32 both sides, other kernels), every top token the same.
    assert check.prompts == 8 and check.same_tokens and check.top1_agreement == 1.0 and check.max_logit_diff < 1e-3
    assert check.timings["onnx_forward_s"] > 0 and check.timings["pytorch_forward_s"] > 0
    tags = versions.version_tags("exp", version)
    assert tags["export.onnx.check"].startswith("run by ONNX Runtime on 8 prompts: top-1 agreement 1.000")
    assert tags["export.onnx.check_command"] == f"ftflow export models:/exp/{version} --kind onnx"
    # The graph keeps the float32 weights (in model.onnx.data beside it) and the constants the exporter folds in:
    # measured 1.23x the safetensors on the tests' tiny model, 1.00x on the demo's 3.1 MB one.
    model = export.VersionModel.read(trained.model_path)
    assert 1.0 <= report.exports["onnx"].bytes / float32_bytes(model.weight_files()) < 1.3

    folder = fetch_export("exp", version, "onnx", tmp_path / "onnx")
    assert {"model.onnx", "model.onnx.data", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    onnx_model, tokenizer = load_export(folder)
    original, original_tokenizer = load_trained(trained.model_path)
    prompts = test["prompt"].head(6).tolist()  # left-padded together: positions count from each first token
    assert onnx_model.layers == original.config.num_hidden_layers  # past and present keys and values per layer
    answers = generate(onnx_model, tokenizer, prompts, 12, 6)  # one token per step on the cache
    assert answers == generate(original, original_tokenizer, prompts, 12, 6)

    pyfunc = mlflow.pyfunc.load_model(str(tracking.download_run_artifact(run_id, "exports/onnx", tmp_path / "py")))
    assert any(r.startswith("onnxruntime==") for r in (tmp_path / "py" / "onnx" / "requirements.txt").read_text()
               .splitlines())
    predicted = pyfunc.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 12})
    assert predicted["text"].tolist() == [a.strip() for a in answers]


def test_onnx_is_refused_in_one_line_for_a_classifier_experts_and_an_adapter_kept_apart(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, num_labels=2)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "classifier")
    problem = unavailable("onnx", export.VersionModel.read(tmp_path / "classifier"))
    assert problem == ("onnx: LlamaForSequenceClassification is not a causal language model; onnx exports those "
                       "(logits of the prompt's tokens, and greedy generation with ONNX Runtime)")
    from transformers import MixtralConfig, MixtralForCausalLM

    MixtralForCausalLM(MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2, vocab_size=64, num_local_experts=2,
                                     num_experts_per_tok=1)).save_pretrained(tmp_path / "moe")
    assert unavailable("onnx", export.VersionModel.read(tmp_path / "moe")) == (
        "onnx: mixtral routes tokens to experts, which torch.onnx does not convert here (measured on Mixtral and "
        "Qwen2-MoE); export merged or merged_bf16")
    kept_apart = export.planned_export_problems(PrefixMethod(num_virtual_tokens=4), ["onnx"])
    assert kept_apart[0].startswith("method prefix is prompt learning: its virtual tokens cannot be merged")


def test_a_family_whose_cache_cannot_be_exported_gets_the_graph_without_it_and_neither_is_one_line(
        lora, tmp_path, monkeypatch):
    _, trained = lora

    def untraceable(*_):
        raise torch.onnx.OnnxExporterError("cannot trace it")

    monkeypatch.setattr(onnx_export, "export_with_cache", untraceable)  # as for Falcon's cache
    onnx_export.write_onnx(trained.model_path, tmp_path / "plain")
    plain = onnx_export.OnnxCausalLM(tmp_path / "plain")
    assert plain.layers == 0
    original, tokenizer = load_trained(trained.model_path)
    prompts = heldout_rows(lora)["prompt"].head(4).tolist()
    assert generate(plain, tokenizer, prompts, 12, 4) == generate(original, tokenizer, prompts, 12, 4)

    monkeypatch.setattr(onnx_export, "export_without_cache", untraceable)  # as for mixture-of-experts routing
    with pytest.raises(UserError, match=r"^onnx: torch.onnx cannot export model type 'llama' here \(cannot trace "
                                        r"it\); export merged or merged_bf16$"):
        onnx_export.write_onnx(trained.model_path, tmp_path / "neither")
