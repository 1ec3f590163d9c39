"""Deploy exports (adapter, merged, merged_bf16, int8) of registered versions on tiny seeded models, on MLflow with a
temporary SQLite store (FTFLOW_HOME per test): what each method can give, sizes, the int8 check on the test split,
loading back, the pyfunc flavour in process and behind a real `mlflow models serve`."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
import torch
from typer.testing import CliRunner

from flows.cli import app
from ftcore import tracking, versions
from ftcore.deploy import export
from ftcore.deploy.config import BeatChampion
from ftcore.deploy.export import (
    ExportReport,
    export_version,
    fetch_export,
    load_export,
    planned_export_problems,
    unavailable,
)
from ftcore.deploy.fidelity import Fidelity
from ftcore.deploy.publish import deploy_stage
from ftcore.errors import UserError
from ftcore.models.config import FullMethod, PrefixMethod
from ftcore.models.generate import generate
from ftcore.models.init import InitJob, init_stage
from ftcore.models.load import load_trained
from ftcore.models.prompting import ChatRefused
from ftcore.outputs import EvalOutput
from ftcore.training.config import TrainConfig
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.ftcore.export_fixtures import heldout_rows, register
from tests.ftcore.pipeline_fixtures import deploy_job_of

ALL_KINDS = ["adapter", "merged", "merged_bf16", "int8"]


def _trained_with(lora, method, root: Path):
    """The same data and model trained a couple of steps with another method."""
    prepared, _ = lora
    base = init_stage(InitJob(model=prepared.recipe.model, method=method, dataset=prepared.dataset), root / "init")
    return train_stage(TrainJob(base=base, dataset=prepared.dataset, train=TrainConfig(max_steps=2, batch_size=8)),
                       root / "train")


@pytest.fixture(scope="module")
def prefix(lora, tmp_path_factory):
    return _trained_with(lora, PrefixMethod(num_virtual_tokens=4), tmp_path_factory.mktemp("prefix"))


@pytest.fixture(scope="module")
def full(lora, tmp_path_factory):
    return _trained_with(lora, FullMethod(), tmp_path_factory.mktemp("full"))


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0].float()


def test_a_lora_version_gives_every_kind_smaller_where_promised_and_each_loads_back(lora, tmp_path):
    _, trained = lora
    run_id, version = register(trained.model_path)
    test = heldout_rows(lora)
    report = export_version(trained.model_path, "exp", version, run_id, ALL_KINDS, test, tolerance=0.05)

    sizes = {kind: record.bytes for kind, record in report.exports.items()}
    assert sizes["adapter"] < sizes["int8"] < sizes["merged_bf16"] < sizes["merged"]
    assert abs(sizes["merged_bf16"] / sizes["merged"] - 0.5) < 0.01
    assert report.int8_size_ratio <= 0.35  # embeddings and output layer quantised too

    fidelity = report.scores["int8"]
    assert fidelity.primary == "exact_match" and fidelity.float32["token_f1"] > 0.2  # a model that answers
    assert fidelity.within_tolerance and abs(fidelity.deltas["exact_match"]) <= 0.05
    assert abs(fidelity.deltas["perplexity"]) / fidelity.float32["perplexity"] < 0.05

    tags = versions.version_tags("exp", version)
    assert tags["export.int8.uri"] == f"runs:/{run_id}/exports/int8"
    assert float(tags["export.int8.size_ratio"]) == pytest.approx(report.int8_size_ratio, rel=1e-5)
    assert float(tags["export.int8.exact_match.delta"]) == fidelity.deltas["exact_match"]
    assert tags["export.int8.within_tolerance"] == "1" and "within the tolerance 0.05" in tags["export.int8.check"]
    assert {f"export.{kind}.bytes" for kind in ALL_KINDS} <= tags.keys()
    # Computed in bfloat16 (as vLLM runs it), not only stored so. Measured: top-1 agreement 1.000, max |logit
    # difference| 0.24.
    bf16 = report.checks["merged_bf16"]
    assert bf16.top1_agreement >= 0.95 and bf16.max_logit_diff < 1.0 and bf16.same_tokens
    assert tags["export.merged_bf16.check"].startswith("run in bfloat16 by transformers on 8 prompts")

    model, tokenizer = load_trained(trained.model_path)
    prompt = test["prompt"].iloc[0]
    expected = _logits(model, tokenizer, prompt)
    # The largest change of a logit, relative to the largest logit: rounding for float32, bf16's 8 bits of
    # mantissa, int8's 256 levels per output channel.
    tolerance = {"adapter": 1e-5, "merged": 1e-6, "merged_bf16": 0.02, "int8": 0.05}
    for kind in ALL_KINDS:
        loaded, loaded_tokenizer = load_export(fetch_export("exp", version, kind, tmp_path / kind))
        difference = (_logits(loaded, loaded_tokenizer, prompt) - expected).abs().max() / expected.abs().max()
        assert difference < tolerance[kind], (kind, difference)
    int8 = loaded.model  # the last kind loaded: quantised, the embeddings too
    assert type(int8.layers[0].mlp.down_proj.weight).__name__ == "Int8Tensor"
    assert type(int8.embed_tokens.weight).__name__ == "IntxUnpackedToInt8Tensor"


def test_a_lora_version_gives_gguf_files_that_read_back_to_its_logits_with_a_modelfile(lora, tmp_path):
    import gguf

    _, trained = lora
    run_id, version = register(trained.model_path)
    kinds = ["gguf_f16", "gguf_q8_0", "gguf_q4_0"]
    report = export_version(trained.model_path, "exp", version, run_id, kinds, heldout_rows(lora), tolerance=0.05)

    sizes = {kind: record.bytes for kind, record in report.exports.items()}
    assert sizes["gguf_q4_0"] < sizes["gguf_q8_0"] < sizes["gguf_f16"]
    checks = report.checks
    assert all(check.same_tokens and check.prompts == 8 for check in checks.values())
    # Measured on this 64-wide model: f16 max |logit difference| 0.010, every top token the same; q8_0 0.32 and
    # 96.7% of the top tokens; q4_0 3.3 and 58% (4 bits in blocks of 32 are coarse at this width). Random weights
    # would agree on about 1 token in 300.
    assert checks["gguf_f16"].top1_agreement == 1.0 and checks["gguf_f16"].max_logit_diff < 0.05
    assert checks["gguf_q8_0"].top1_agreement >= 0.9 and checks["gguf_q8_0"].max_logit_diff < 1.0
    assert checks["gguf_q4_0"].top1_agreement >= 0.4
    tags = versions.version_tags("exp", version)
    assert "top-1 agreement 1.000" in tags["export.gguf_f16.check"]
    # Scored on the test split beside float32 (gguf_f16 is not: only quantised kinds are). Measured: q8_0 the same
    # exact match, perplexity +0.07%; q4_0 exact match 0.27 against 0.33, perplexity +17%.
    assert set(report.scores) == {"gguf_q8_0", "gguf_q4_0"}
    q8, q4 = report.scores["gguf_q8_0"], report.scores["gguf_q4_0"]
    assert q8.within_tolerance and abs(q8.deltas["perplexity"]) / q8.float32["perplexity"] < 0.01
    assert q4.deltas["perplexity"] > 10 * abs(q8.deltas["perplexity"])
    assert tags["export.gguf_q4_0.check"].startswith("read back by transformers' GGUF loader on 8 prompts: ")
    assert f"; gguf_q4_0 exact_match {q4.exported['exact_match']:.4g} against float32" in tags["export.gguf_q4_0.check"]
    assert tags["export.gguf_q8_0.within_tolerance"] == "1"

    folder = fetch_export("exp", version, "gguf_q8_0", tmp_path / "q8")
    assert (folder / "Modelfile").read_text().startswith(f"FROM ./exp-v{version}-q8_0.gguf\nPARAMETER stop ")
    reader = gguf.GGUFReader(folder / f"exp-v{version}-q8_0.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    loaded, tokenizer = load_export(folder)
    original, original_tokenizer = load_trained(trained.model_path)
    prompt = heldout_rows(lora)["prompt"].iloc[0]
    assert tokenizer(prompt)["input_ids"] == original_tokenizer(prompt)["input_ids"]
    assert (_logits(loaded, tokenizer, prompt) - _logits(original, original_tokenizer, prompt)).abs().max() < 1.0


def test_gguf_is_refused_in_one_line_for_a_family_without_a_mapping_and_an_adapter_kept_apart(prefix, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    kept_apart = export.VersionModel.read(prefix.model_path)
    assert unavailable("gguf_q8_0", kept_apart).startswith("method prefix is prompt learning")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    problem = unavailable("gguf_f16", export.VersionModel.read(tmp_path / "gpt2"))
    assert problem.startswith("gguf_f16: model type 'gpt2' has no GGUF tensor mapping here (written: llama, "
                              "mistral, qwen2, qwen3)")


def test_an_output_layer_tied_to_the_embeddings_is_quantised_apart(lora, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ftcore.deploy.quantize import float32_bytes, weight_bytes, write_int8
    from ftcore.models.load import load_tokenizer

    tokenizer = load_tokenizer(lora[1].model_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    tied = AutoModelForCausalLM.from_config(config)
    tied.save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")
    write_int8(tmp_path / "tied", tmp_path / "int8")
    int8, _ = load_export(tmp_path / "int8")
    assert type(int8.lm_head.weight).__name__ == "Int8Tensor"
    assert type(int8.model.embed_tokens.weight).__name__ == "IntxUnpackedToInt8Tensor"
    # Two int8 matrices where float32 stores one: still well under half the size.
    assert weight_bytes(tmp_path / "int8") / float32_bytes([tmp_path / "tied" / "model.safetensors"]) < 0.4
    prompt = "Question: What does MI stand for?"
    expected = _logits(tied, tokenizer, prompt)
    assert (_logits(int8, tokenizer, prompt) - expected).abs().max() < 0.05 * expected.abs().max()


def test_an_export_made_by_a_later_run_of_the_same_model_is_fetched_from_that_run(lora, tmp_path):
    """A second run that trains the same model gets the first run's version back and logs the exports it makes in
    its own run (the first run's deploy had failed before exporting): serving the export reads the run its tag
    names, not the version's."""
    _, trained = lora
    _, version = register(trained.model_path, "again")
    later = tracking.start_pipeline_run("again", "run", {"name": "again"}, {})
    export_version(trained.model_path, "again", version, later, ["merged"], None, tolerance=0.05)
    folder = fetch_export("again", version, "merged", tmp_path / "merged")
    assert load_export(folder)[0] is not None


def test_int8_quantises_the_weights_of_linear_layers_with_biases_and_keeps_the_biases(tmp_path):
    """Qwen2's attention projections carry biases: a config naming the module quantised its bias too (transformers
    quantises every parameter of a module that matches), and the export failed on its first forward (torchao's int8
    linear adds the bias)."""
    from ftcore.deploy.quantize import write_int8
    from ftcore.models.load import load_model, load_tokenizer
    from tests.models.zoo import folder

    write_int8(folder("qwen2"), tmp_path / "int8")
    int8, _ = load_export(tmp_path / "int8")
    attention = int8.model.layers[0].self_attn.q_proj
    assert type(attention.weight).__name__ == "Int8Tensor" and type(attention.bias) is torch.nn.Parameter
    tokenizer = load_tokenizer(folder("qwen2"))
    expected = _logits(load_model(folder("qwen2")), tokenizer, "Question: What does MI stand for?")
    answer = _logits(int8, tokenizer, "Question: What does MI stand for?")
    assert (answer - expected).abs().max() < 0.05 * expected.abs().max()


def test_fetching_an_export_again_reuses_the_folder_and_a_missing_one_says_how_to_make_it(lora, tmp_path,
                                                                                           monkeypatch):
    _, trained = lora
    run_id, version = register(trained.model_path)
    export_version(trained.model_path, "exp", version, run_id, ["merged"], None, tolerance=0.05)
    downloads = []
    download = tracking.download_run_artifact
    monkeypatch.setattr(tracking, "download_run_artifact", lambda *args: downloads.append(args) or download(*args))
    folder = fetch_export("exp", version, "merged", tmp_path / "merged")
    assert fetch_export("exp", version, "merged", tmp_path / "merged") == folder
    assert len(downloads) == 1  # the copy was checked and reused
    [weights] = folder.glob("*.safetensors")
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # a truncated copy (its manifest still claims the right hash)
    assert fetch_export("exp", version, "merged", tmp_path / "merged") == folder
    assert len(downloads) == 2 and weights.read_bytes() == whole
    with pytest.raises(UserError, match=r"has no int8 export; make it with `ftflow export models:/exp/1 --kind int8`"):
        fetch_export("exp", version, "int8", tmp_path / "int8")

    # Damaged in the artifact store itself: one line naming the version and how to make the export again.
    [stored] = (Path(os.environ["FTFLOW_HOME"]) / "mlartifacts").rglob(f"{run_id}/**/merged/**/{weights.name}")
    stored.write_bytes(whole[:100])
    weights.unlink()
    with pytest.raises(UserError, match=rf"models:/exp/{version}: its merged export in the artifact store is not "
                                        r"what was exported .*ftflow export"):
        fetch_export("exp", version, "merged", tmp_path / "merged")


def test_prefix_tuning_cannot_be_merged_but_exports_its_adapter_and_int8(prefix, tmp_path):
    model = export.VersionModel.read(prefix.model_path)
    assert (model.method, model.merged) == ("prefix", False)
    line = ("method prefix is prompt learning: its virtual tokens cannot be merged into the base; export adapter or "
            "int8, or serve the version as it is")
    assert unavailable("merged", model) == unavailable("merged_bf16", model) == line
    # validate's check, made from the recipe before training, agrees with the trained folder
    assert planned_export_problems(PrefixMethod(), ["adapter", "merged", "merged_bf16", "int8"]) == [line, line]
    run_id, version = register(prefix.model_path)
    with pytest.raises(UserError, match="exports: method prefix is prompt learning"):
        export_version(prefix.model_path, "exp", version, run_id, ["int8", "merged"], None, tolerance=0.05)
    assert "export.int8.uri" not in versions.version_tags("exp", version)  # refused before building anything

    report = export_version(prefix.model_path, "exp", version, run_id, ["adapter", "int8"], None, tolerance=0.05)
    assert report.int8_size_ratio <= 0.35 and not report.scores  # no test split given: size only
    assert report.verdicts()["int8"] == "int8 not scored: the test split has no references"
    original, tokenizer = load_trained(prefix.model_path)
    prompt = "Question: What does BP stand for?\nAnswer:"
    expected = _logits(original, tokenizer, prompt)
    for kind, tolerance in (("adapter", 1e-5), ("int8", 0.05)):
        loaded, loaded_tokenizer = load_export(fetch_export("exp", version, kind, tmp_path / kind))
        assert type(loaded).__name__ == "PeftModelForCausalLM"  # the virtual tokens on top of the (int8) base
        assert (_logits(loaded, loaded_tokenizer, prompt) - expected).abs().max() / expected.abs().max() < tolerance


def test_full_fine_tuning_has_no_adapter_but_merges_trivially(full, tmp_path):
    model = export.VersionModel.read(full.model_path)
    assert unavailable("adapter", model) == ("method full has no adapter: it trains every weight; export merged, "
                                             "merged_bf16 or int8")
    assert unavailable("merged", model) is None and unavailable("int8", model) is None
    assert planned_export_problems(FullMethod(), ["adapter", "merged", "int8"]) == [unavailable("adapter", model)]
    run_id, version = register(full.model_path)
    export_version(full.model_path, "exp", version, run_id, ["merged"], None, tolerance=0.05)
    merged, _ = load_export(fetch_export("exp", version, "merged", tmp_path / "merged"))
    original, _ = load_trained(full.model_path)
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), original.state_dict().values(),
                                                strict=True))


def _evaluation(tmp_path: Path) -> EvalOutput:
    """What the evaluate stage hands deploy: a candidate that beats the base model."""
    return EvalOutput(path=tmp_path, content_hash="x", predictions_path=tmp_path / "p.jsonl",
                      metrics={"exact_match": 0.5, "base.exact_match": 0.0, "improvement.exact_match": 0.5})


def test_the_deploy_stage_refuses_a_kind_the_method_cannot_give_before_registering(prefix, tmp_path):
    evaluation = _evaluation(tmp_path)
    run_id = tracking.start_pipeline_run("exp", "run", {"name": "exp"}, {})
    with pytest.raises(UserError, match="method prefix is prompt learning"):
        deploy_stage(deploy_job_of(prefix, evaluation, [BeatChampion(metric="exact_match", confident=False)], "refused",
                                   exports=["merged"]), tmp_path / "deploy", run_id, {})
    assert versions.version_for_alias("refused", versions.CHALLENGER) is None


def test_the_deploy_stage_exports_what_it_registered(lora, tmp_path):
    prepared, trained = lora
    evaluation = _evaluation(tmp_path)
    run_id = tracking.start_pipeline_run("exp", "run", {"name": "exp"}, {})
    job = deploy_job_of(trained, evaluation, [BeatChampion(metric="exact_match", confident=False)], "deployed",
                        dataset=prepared.dataset, exports=["adapter"])
    out = deploy_stage(job, tmp_path / "deploy", run_id, {})
    record = json.loads((out.path / "deploy.json").read_text())
    assert record["exports"]["adapter"]["uri"] == f"runs:/{run_id}/exports/adapter"
    assert out.metrics["export.adapter.mb"] == record["exports"]["adapter"]["bytes"] / 2**20
    assert versions.version_tags("deployed", out.version)["export.adapter.uri"] == f"runs:/{run_id}/exports/adapter"


def test_an_int8_loss_beyond_the_tolerance_is_tagged_and_logged(lora, monkeypatch, caplog):
    _, trained = lora
    run_id, version = register(trained.model_path)
    worse = Fidelity("int8", {"exact_match": 0.6, "perplexity": 2.0}, {"exact_match": 0.5, "perplexity": 2.1},
                     "exact_match", 0.05)
    monkeypatch.setattr(export.QuantisedScorer, "fidelity", lambda *args: worse)
    with caplog.at_level(logging.WARNING, logger="ftcore.deploy.export"):
        report = export_version(trained.model_path, "exp", version, run_id, ["int8"], None, tolerance=0.05)
    tags = versions.version_tags("exp", version)
    assert tags["export.int8.within_tolerance"] == "0" and float(tags["export.int8.exact_match.delta"]) == -0.1
    assert "exact_match 0.5 against float32 0.6: a loss of +0.1, BEYOND the tolerance 0.05" in tags["export.int8.check"]
    assert report.metrics()["export.int8.within_tolerance"] == 0.0
    assert "BEYOND the tolerance" in caplog.text


def test_perplexity_losses_are_relative_and_gains_are_within_any_tolerance():
    assert Fidelity("int8", {"perplexity": 2.0}, {"perplexity": 2.2}, "perplexity", 0.05).loss == pytest.approx(0.1)
    assert not Fidelity("int8", {"perplexity": 2.0}, {"perplexity": 2.2}, "perplexity", 0.05).within_tolerance
    assert Fidelity("gguf_q4_0", {"accuracy": 0.8}, {"accuracy": 0.9}, "accuracy", 0.0).within_tolerance
    assert ExportReport({}).as_dict() == {"exports": {}, "checks": {}}


def test_the_pyfunc_flavour_predicts_in_process_and_behind_mlflow_models_serve(lora, tmp_path):
    import mlflow

    _, trained = lora
    test = heldout_rows(lora)
    run_id, version = register(trained.model_path)
    export_version(trained.model_path, "exp", version, run_id, ["int8"], test, tolerance=0.05)
    prompts = test["prompt"].iloc[:3].tolist()
    model, tokenizer = load_export(fetch_export("exp", version, "int8", tmp_path / "int8"))
    expected = [o.strip() for o in generate(model, tokenizer, prompts, 8, 4)]

    local = tracking.download_run_artifact(run_id, "exports/int8", tmp_path / "pyfunc")
    pyfunc = mlflow.pyfunc.load_model(str(local))
    assert [c.name for c in pyfunc.metadata.get_input_schema().inputs] == ["prompt", "messages"]
    example = json.loads((local / "input_example.json").read_text())
    assert example["data"] == [[test["prompt"].iloc[0]]]  # the first test prompt
    predicted = pyfunc.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 8})
    assert predicted["text"].tolist() == expected

    answers = _served(f"runs:/{run_id}/exports/int8", {"dataframe_records": [{"prompt": p} for p in prompts],
                                                       "params": {"max_new_tokens": 8}})
    assert [a["text"] for a in answers["predictions"]] == expected


def test_the_pyfunc_model_asks_a_chat_in_the_trained_prompt_template_and_refuses_a_longer_one(lora, tmp_path):
    import mlflow

    _, trained = lora
    test = heldout_rows(lora).iloc[:10]
    run_id, version = register(trained.model_path)
    export_version(trained.model_path, "exp", version, run_id, ["merged"], None, tolerance=0.05)
    pyfunc = mlflow.pyfunc.load_model(str(tracking.download_run_artifact(run_id, "exports/merged", tmp_path)))
    chats = pd.DataFrame({"messages": [[{"role": "user", "content": q}] for q in test["raw_prompt"]]})

    assert pyfunc.unwrap_python_model().prompts(chats) == test["prompt"].tolist()  # "Question: {prompt}\nAnswer:"
    answers = pyfunc.predict(chats, params={"max_new_tokens": 24})["text"].tolist()
    asked = pyfunc.predict(pd.DataFrame({"prompt": test["prompt"]}), params={"max_new_tokens": 24})["text"].tolist()
    assert answers == asked
    assert sum(a == c.strip() for a, c in zip(answers, test["completion"], strict=True)) >= 3, answers

    turns = [{"role": "user", "content": test["raw_prompt"].iloc[0]},
             {"role": "assistant", "content": answers[0]}, {"role": "user", "content": "And MI?"}]
    with pytest.raises(ChatRefused, match=r"single prompts written as 'Question: \{prompt\}\\nAnswer:'.*"
                                          r"pass a `prompt` column with the prompt in that template"):
        pyfunc.predict(pd.DataFrame({"messages": [turns]}))


def _served(model_uri: str, request: dict) -> dict:
    """POST `request` to /invocations of `mlflow models serve` started on the model, as a user would run it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)  # the server is started as `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen([f"{bin_dir}/mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 120 s"
            time.sleep(0.5)
        response = requests.post(f"{url}/invocations", json=request, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn it started, in the session started for them
        server.wait(timeout=30)


def test_ftflow_export_exports_a_registered_version_with_its_runs_test_split(lora, tmp_path):
    prepared, trained = lora
    run_id, version = register(trained.model_path, "clinical")
    tracking.log_stage(run_id, "clean_balance", {}, {"dataset": prepared.dataset.artifacts["dataset"]}, cached=False)
    versions.set_alias("clinical", versions.CHAMPION, version)
    result = CliRunner().invoke(app, ["export", "models:/clinical@champion", "--kind", "merged", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["exports"]["merged"]["uri"] == f"runs:/{run_id}/exports/merged"
    assert report["checks"] == {}  # merged is the version's own weights: nothing to check
    local = tracking.download_run_artifact(run_id, "exports/merged/input_example.json", tmp_path)
    assert json.loads(local.read_text())["data"] == [[heldout_rows(lora)["prompt"].iloc[0]]]

    # --to: the folder a serving container mounts; made only when the version has no such export yet
    to = tmp_path / "served" / "clinical"
    result = CliRunner().invoke(app, ["export", "models:/clinical@champion", "--kind", "merged_bf16", "--to", to])
    assert result.exit_code == 0 and f"merged_bf16 of models:/clinical/{version}: {to}" in result.output
    assert f"merged_bf16: runs:/{run_id}/exports/merged_bf16" in result.output  # made, as the version had none
    config = json.loads((to / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and (to / "model.safetensors").is_file() and (to / "tokenizer.json").is_file()
    made = versions.version_tags("clinical", version)["export.merged_bf16.hash"]
    again = CliRunner().invoke(app, ["export", "models:/clinical@champion", "--kind", "merged_bf16", "--to", to])
    assert again.exit_code == 0 and "runs:/" not in again.output  # fetched, not made again
    assert versions.version_tags("clinical", version)["export.merged_bf16.hash"] == made
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for args, line in ((["--kind", "merged", "--kind", "int8", "--to", to], "--to: one folder holds one export"),
                       (["--kind", "merged", "--to", tmp_path / "mine"], "holds other files")):
        refused = CliRunner().invoke(app, ["export", "models:/clinical@champion", *map(str, args)])
        assert refused.exit_code == 2 and line in refused.output, refused.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    refused = CliRunner().invoke(app, ["export", "models:/clinical/1", "--kind", "fp8"])
    assert refused.exit_code == 2 and "--kind: fp8 is not an export kind" in refused.output
    missing = CliRunner().invoke(app, ["export", "models:/clinical/7"])
    assert missing.exit_code == 2 and "has no version 7" in missing.output


def test_the_int8_export_serves_the_answers_of_the_float32_model(lora, tmp_path):
    import httpx

    from ftcore.serving.config import ServeConfig
    from ftcore.serving.server import serving

    _, trained = lora
    run_id, version = register(trained.model_path, "served-int8")
    export_version(trained.model_path, "served-int8", version, run_id, ["int8"], None, tolerance=0.05)
    test = heldout_rows(lora).iloc[:10]
    prompts, references = test["prompt"].tolist(), test["completion"].str.strip().tolist()
    answers = {}
    for variant in ("model", "int8"):
        cfg = ServeConfig.model_validate({"variant": variant, "request_log": {"url": f"sqlite:///{tmp_path}/r.db"}})
        with serving(f"models:/served-int8/{version}", cfg) as url:
            body = {"prompt": prompts, "max_tokens": 24, "temperature": 0}
            response = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
        assert response["model_version"] == version
        answers[variant] = [choice["text"] for choice in response["choices"]]
    # Where the float32 model answers right, the int8 one does too (one slip allowed); where it babbles, the
    # babble may differ: rounding flips near-ties between tokens.
    right = {variant: {i for i, text in enumerate(texts) if text.strip() == references[i]}
             for variant, texts in answers.items()}
    assert len(right["model"]) >= 3 and len(right["model"] - right["int8"]) <= 1, answers
