"""The base export and adapter exports written for it (what vLLM's --enable-lora --lora-modules serves,
infra/k8s/gpu/vllm-lora.yaml): the adapter folded into the base as vLLM reads the files gives the version's logits,
`--base` refuses a base the version was not trained on, and methods vLLM cannot serve are refused in one line."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flows.cli import app
from ftcore import versions
from ftcore.deploy import export
from ftcore.deploy.base_export import lora_folded
from ftcore.deploy.export import export_version, fetch_export, unavailable
from ftcore.models.config import FullMethod
from ftcore.models.init import InitJob, init_stage
from ftcore.models.load import load_trained, reload_model, reload_tokenizer
from ftcore.training.config import TrainConfig
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.ftcore.export_fixtures import heldout_rows, register


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0]


def test_the_base_export_with_the_adapter_folded_in_as_vllm_reads_it_gives_the_versions_logits(lora, tmp_path):
    _, trained = lora
    run_id, version = register(trained.model_path)
    report = export_version(trained.model_path, "exp", version, run_id, ["base", "adapter"], heldout_rows(lora),
                            tolerance=0.05)
    check = report.checks["base"]
    # Measured: max |logit difference| 0 (the fold adds back exactly what the unmerge took away), every top token
    # the same; the tolerance leaves room for float32 rounding on other models.
    assert check.top1_agreement == 1.0 and check.max_logit_diff < 1e-3 and check.same_tokens
    tags = versions.version_tags("exp", version)
    assert tags["export.base.check"].startswith("base export with the adapter folded in as vLLM reads it on 8 ")
    assert tags["export.base.check_command"] == f"ftflow export models:/exp/{version} --kind base"

    base = fetch_export("exp", version, "base", tmp_path / "base")
    adapter = fetch_export("exp", version, "adapter", tmp_path / "lora" / "exp")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in base.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    prompt = heldout_rows(lora)["prompt"].iloc[0]
    version_model, tokenizer = load_trained(trained.model_path)
    want = _logits(version_model, tokenizer, prompt)
    folded = _logits(lora_folded(base, adapter), reload_tokenizer(base), prompt)
    bare = _logits(reload_model(base), reload_tokenizer(base), prompt)
    assert (folded - want).abs().max() < 1e-3
    assert (bare - want).abs().max() > 0.1  # the adapter matters: the base alone is not the version


def test_an_adapter_export_for_a_base_is_refused_unless_the_version_was_trained_on_it(lora, tmp_path):
    _, trained = lora
    _, version = register(trained.model_path, "support")
    versions.set_alias("support", versions.CHAMPION, version)
    cli = CliRunner()
    base = tmp_path / "models" / "base"
    made = cli.invoke(app, ["export", "models:/support@champion", "--kind", "base", "--to", str(base)])
    assert made.exit_code == 0, made.output
    assert "base: base export with the adapter folded in as vLLM reads it" in made.output
    served = tmp_path / "models" / "lora" / "support"
    result = cli.invoke(app, ["export", "models:/support@champion", "--kind", "adapter", "--to", str(served),
                              "--base", str(base)])
    assert result.exit_code == 0 and (served / "adapter_model.safetensors").is_file(), result.output

    other = tmp_path / "other-base"  # the same model with other embeddings: another base
    other.mkdir()
    for file in base.iterdir():
        if file.is_file():
            (other / file.name).write_bytes(file.read_bytes())
    weights = load_file(str(other / "model.safetensors"))
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] + 0.01
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    merged = tmp_path / "merged"  # the version's own merged weights: its embeddings are the base's, its projections not
    made = cli.invoke(app, ["export", "models:/support@champion", "--kind", "merged", "--to", str(merged)])
    assert made.exit_code == 0, made.output
    pickled = tmp_path / "pickled"  # the same base with its weights in pytorch_model.bin
    pickled.mkdir()
    (pickled / "config.json").write_bytes((base / "config.json").read_bytes())
    torch.save(load_file(str(base / "model.safetensors")), pickled / "pytorch_model.bin")
    refused_to = tmp_path / "models" / "lora" / "refused"
    for extra, line in (
            (["--base", str(merged)], f"--base: models:/support/{version} was not trained on the model in {merged} "
                                      "(its merged model.layers.0.mlp.down_proj.weight is not the base's plus the "
                                      "adapter)"),
            (["--base", str(other)], f"--base: models:/support/{version} was not trained on the model in {other} "
                                     "(its model.embed_tokens.weight differs from the base's)"),
            (["--base", str(tmp_path)], f"--base: {tmp_path} is not a model folder in safetensors (no config.json)"),
            (["--base", str(pickled)], f"--base: {pickled} is not a model folder in safetensors (no "
                                       "model.safetensors)")):
        refused = cli.invoke(app, ["export", "models:/support@champion", "--kind", "adapter", "--to",
                                   str(refused_to), *extra])
        assert refused.exit_code == 2 and line in " ".join(refused.output.split()), refused.output
        assert not refused_to.exists()
    without_to = cli.invoke(app, ["export", "models:/support@champion", "--kind", "adapter", "--base", str(base)])
    assert without_to.exit_code == 2 and "--base: names the base an adapter export is written for" in \
        without_to.output


def test_a_base_export_is_refused_in_one_line_where_vllm_could_not_serve_the_adapter(lora, tmp_path):
    prepared, trained = lora
    full = train_stage(TrainJob(base=init_stage(InitJob(model=prepared.recipe.model, method=FullMethod(),
                                                        dataset=prepared.dataset), tmp_path / "init"),
                                dataset=prepared.dataset, train=TrainConfig(max_steps=1, batch_size=8)),
                       tmp_path / "train")
    assert unavailable("base", export.VersionModel.read(full.model_path)).startswith(
        "method full: a base export is the base of a LoRA adapter")
    assert export.planned_export_problems(FullMethod(), ["base"])

    saves_a_head = tmp_path / "head"  # a LoRA adapter that also trains a module in full (a classifier's head)
    (saves_a_head / "trained_adapter").mkdir(parents=True)
    config = json.loads((trained.model_path / "trained_adapter" / "adapter_config.json").read_text())
    (saves_a_head / "trained_adapter" / "adapter_config.json").write_text(
        json.dumps(config | {"modules_to_save": ["score"]}))
    assert unavailable("base", export.VersionModel.read(saves_a_head)) == (
        "base: its adapter also trains score in full (modules_to_save), which vLLM's LoRA serving refuses; export "
        "merged or merged_bf16")
