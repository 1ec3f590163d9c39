"""deploy stage: register a new model version (alias `challenger`), move `champion` only when the gate passes, and
export the version (deploy.exports: ftcore/deploy/export.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ftcore import versions
from ftcore.data.images import with_image_paths
from ftcore.deploy.config import DeployConfig
from ftcore.deploy.export import ExportReport, VersionModel, check_kinds, export_version
from ftcore.deploy.gate import GateDecision, Reference, decide, not_again
from ftcore.errors import UserError
from ftcore.evaluation.intervals import metric_key
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.outputs import DatasetOutput, DeployOutput, EvalOutput, TrainOutput
from ftcore.stages import Stage
from ftcore.tensors import non_finite_weights

MODEL_HASH_TAG = "model_hash"  # a version's tag: the content hash of the train stage's output it registered
REFERENCE_NAMES = {"base": "the base model", "tfidf": "the TF-IDF + logistic regression baseline",
                   "length": "the baseline preferring the longer answer"}


class DeployJob(BaseModel):
    """What the deploy stage decides on and registers: the trained model, its evaluation, the recipe's `deploy`
    section, and where it registers (the resolved name, on the MLflow server at `tracking_uri`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trained: TrainOutput
    evaluation: EvalOutput
    deploy: DeployConfig
    registered_model: str = Field(description="the resolved name: deploy.registered_model, else the recipe's name")
    tracking_uri: str = Field(description="the MLflow server the version is registered on: another server registers "
                                          "anew, so it is part of the stage's key")
    dataset: DatasetOutput | None = Field(None, description="its test split scores the int8 export")


def deploy_stage(job: DeployJob, out_dir: Path, mlflow_run_id: str, tags: dict[str, str]) -> DeployOutput:
    """Register the trained model as a version of the run `mlflow_run_id` (with `tags`), move the aliases, and
    build `job.deploy.exports`. The exports are built after the version is registered (an adapter export names it
    as its base) and scored on the dataset's test split; a kind the method cannot give, or a weight that is not
    finite, fails before anything is registered."""
    trained, name = job.trained, job.registered_model
    check_finite(trained.model_path)
    check_kinds(VersionModel.read(trained.model_path), list(job.deploy.exports))
    champion = versions.version_for_alias(name, versions.CHAMPION)
    decision, reference_name = gate_decision(job, champion)
    # The same trained model (MODEL_HASH_TAG) registered before, by another run or at once with this one, is that
    # version again: one model, one version. Its tags are its lineage (`tags`); the gate's verdict and the metrics
    # are in its description for people and in its run for code (versions.version_stage_metrics).
    version = versions.register_version(mlflow_run_id, name, trained.model_path, tags=tags, identity=MODEL_HASH_TAG)
    versions.set_alias(name, versions.CHALLENGER, version)
    if decision.passed:
        decision = promote(name, version, compared_version(job.evaluation, champion), decision)
    # The decision that promoted it, or this run's on its own version; else an earlier run's verdict stays.
    if decision.passed or versions.version_run_id(name, version) == mlflow_run_id:
        versions.describe_version(name, version, version_description(decision, job.evaluation.metrics))
    test_split = job.dataset.splits.get("test") if job.dataset is not None else None
    exported = export_version(trained.model_path, name, version, mlflow_run_id, list(job.deploy.exports),
                              test_rows(test_split) if test_split is not None else None,
                              job.deploy.export_tolerance)
    return write_record(name, version, decision, reference_name, exported, out_dir)


def test_rows(split: Path) -> pd.DataFrame:
    """The test split's rows, images as file paths."""
    return with_image_paths(pd.read_parquet(split), split)


def gate_decision(job: DeployJob, champion: dict | None) -> tuple[GateDecision, str]:
    """The gate's decision and the name of the reference it compared against: the champion, or before the first
    one the objective's reference; the champion itself again is not promoted again."""
    if champion and champion["tags"].get(MODEL_HASH_TAG) == job.trained.content_hash:
        reference_name = f"champion v{champion['version']}"
        return not_again(reference_name), reference_name
    gate = job.deploy.gate
    primary = next(rule for rule in gate if rule.rule == "beat_champion")
    reference = gate_reference(primary.metric, job.evaluation, job.registered_model, champion)
    return decide(gate, job.evaluation.metrics, reference), reference.name


def write_record(name: str, version: str, decision: GateDecision, reference_name: str, exported: ExportReport,
                 out_dir: Path) -> DeployOutput:
    """deploy.json (the version, its aliases, the gate's rules, the exports), written atomically, and the output."""
    aliases = versions.aliases_of(name, version)
    rules = [outcome.as_dict() for outcome in decision.rules]
    record = {"registered_model": name, "version": version, "aliases": aliases,
              "gate": {"passed": decision.passed, "reason": decision.reason, "reference": reference_name,
                       "rules": rules},
              **exported.as_dict()}
    with atomic_dir(out_dir) as tmp:
        (tmp / "deploy.json").write_text(json.dumps(record, indent=2))
    return DeployOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        registered_model=name,
        version=version,
        aliases=aliases,
        uri=f"models:/{name}/{version}",
        gate_passed=decision.passed,
        gate_reason=decision.reason,
        gate_rules=rules,
        metrics={"version": float(version), "gate_passed": float(decision.passed),
                 "gate_improvement": decision.improvement,
                 **{f"gate.{o.rule}.passed": float(o.passed) for o in decision.rules}, **exported.metrics()},
        artifacts={"decision": out_dir / "deploy.json"},
    )


def check_finite(model_path: Path) -> None:
    """Refuse a model with a NaN or infinite weight: it answers nothing, and registering it could make it champion.
    The train stage stops at the first one; this guards what reaches deploy by another way (an older output)."""
    if (bad := non_finite_weights(model_path)) is not None:
        raise UserError(f"deploy: {model_path}/{bad} holds NaN or infinite values, so the model is not registered; "
                        f"train it again with a lower train.learning_rate")


def compared_version(evaluation: EvalOutput, champion: dict | None) -> str | None:
    """The champion version the gate compared with: the one scored beside the candidate (pinned when the run
    started), else the one whose recorded score it used; None when it compared with a baseline (no champion)."""
    if evaluation.champion is not None:
        return evaluation.champion.rsplit("/", 1)[-1]
    return champion["version"] if champion else None


def promote(name: str, version: str, compared: str | None, decision: GateDecision) -> GateDecision:
    """Move champion to `version` only if it still points at the version the gate compared with (compare and set):
    another run that promoted its own version meanwhile is not overwritten by a candidate that never faced it.
    The compare and the set are atomic for runs sharing FTFLOW_HOME (versions.move_alias); runs on other machines
    sharing only a tracking server keep a window of one registry call (MLflow has no compare-and-set)."""
    found = versions.move_alias(name, versions.CHAMPION, version, expected=compared)
    if found in (compared, version):  # moved now, or by a run that registered the same model at once with this one
        return decision
    faced = f"v{compared}" if compared else "the baseline (no champion then)"
    reason = (f"the gate passed against {faced}, but champion moved to v{found} meanwhile (another run "
              f"promoted it); v{version} stays challenger: run again to face v{found}")
    return replace(decision, passed=False, reason=reason)


def version_description(decision: GateDecision, metrics: dict[str, float]) -> str:
    """What the registry's version page shows first (markdown): the gate's verdict, each rule's outcome (the
    primary metric against the champion's among them) and the candidate's own metrics."""
    lines = [f"**Gate {'passed' if decision.passed else 'failed'}**: {decision.reason}", ""]
    lines += [f"- {'passed' if o.passed else '**failed**'} `{o.rule}`: {o.reason}" for o in decision.rules]
    own = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if "." not in k)
    return "\n".join([*lines, "", f"Metrics: {own}" if own else "No metrics."])


def gate_reference(metric: str, evaluation: EvalOutput, registered_model: str, champion: dict | None) -> Reference:
    """The champion scored on this test set (the evaluate stage scored it beside the candidate); its recorded
    score (its run's evaluate metric) if it moved after this run pinned it; with no champion, the evaluate stage's
    reference (the base model; for classification the TF-IDF baseline; for a reward model the longer-answer
    baseline)."""
    if evaluation.champion is not None:
        version = evaluation.champion.rsplit("/", 1)[-1]
        return Reference(f"champion v{version}", evaluation.metrics[f"champion.{metric}"], True)
    recorded = (versions.version_stage_metrics(registered_model, champion["version"], Stage.evaluate) if champion
                else {})
    if metric in recorded:
        return Reference(f"champion v{champion['version']} (its recorded score)", recorded[metric], False)
    name = evaluation.reference
    return Reference(REFERENCE_NAMES.get(name, name), evaluation.metrics[metric_key(name, metric)], True)
