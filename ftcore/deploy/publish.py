"""deploy stage: register a new model version (alias `challenger`), move `champion` only when the gate passes, and
export the version (deploy.exports: ftcore/deploy/export.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ftcore import tracking
from ftcore.deploy.export import VersionModel, check_kinds, export_version
from ftcore.deploy.gate import GateDecision, Reference, decide, not_again
from ftcore.errors import UserError
from ftcore.evaluate_config import GateRule
from ftcore.evaluation.scores import metric_key
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.outputs import DeployOutput, EvalOutput, TrainOutput
from ftcore.tensors import non_finite_weights

MODEL_HASH_TAG = "model_hash"  # a version's tag: the content hash of the train stage's output it registered
REFERENCE_NAMES = {"base": "the base model", "tfidf": "the TF-IDF + logistic regression baseline",
                   "length": "the baseline preferring the longer answer"}
# The evaluate stage's metrics kept as the version's `metric.*` tags: the candidate's own (bare names) and what it
# forgot; the baselines' stay in the run.
BASELINE_PREFIXES = ("base.", "fewshot.", "start.", "champion.", "tfidf.", "length.", "retained.", "improvement.")


def publish(
    trained: TrainOutput,
    evaluation: EvalOutput,
    gate: list[GateRule],
    registered_model: str,
    mlflow_run_id: str,
    tags: dict[str, str],
    out_dir: Path,
    exports: Sequence[str] = (),
    int8_tolerance: float = 0.05,
    test_split: Path | None = None,
) -> DeployOutput:
    """`exports` are built after the version is registered (an adapter export names it as its base) and scored on
    `test_split`; a kind the method cannot give, or a weight that is not finite, fails before anything is
    registered."""
    check_finite(trained.model_path)
    check_kinds(VersionModel.read(trained.model_path), list(exports))
    champion = tracking.version_for_alias(registered_model, tracking.CHAMPION)
    if champion and champion["tags"].get(MODEL_HASH_TAG) == trained.content_hash:
        reference_name = f"champion v{champion['version']}"
        decision = not_again(reference_name)
    else:
        primary = next(rule for rule in gate if rule.rule == "beat_champion")
        reference = gate_reference(primary.metric, evaluation, champion)
        reference_name = reference.name
        decision = decide(gate, evaluation.metrics, reference)
    decision_tags = {**version_metric_tags(evaluation.metrics), **gate_tags(decision)}
    # The same trained model (MODEL_HASH_TAG) registered before, by another run or at once with this one, is that
    # version again: one model, one version.
    version = tracking.register_version(mlflow_run_id, registered_model, trained.model_path,
                                        tags={**tags, **decision_tags}, identity=MODEL_HASH_TAG)
    tracking.set_alias(registered_model, tracking.CHALLENGER, version)
    if decision.passed:
        decision = promote(registered_model, version, compared_version(evaluation, champion), decision)
        if decision.passed and tracking.version_run_id(registered_model, version) != mlflow_run_id:
            tracking.set_version_tags(registered_model, version, decision_tags)  # the decision that promoted it
    test = pd.read_parquet(test_split) if test_split is not None else None
    exported = export_version(trained.model_path, registered_model, version, mlflow_run_id, list(exports), test,
                              int8_tolerance)
    aliases = tracking.aliases_of(registered_model, version)
    rules = [outcome.as_dict() for outcome in decision.rules]
    record = {"registered_model": registered_model, "version": version, "aliases": aliases,
              "gate": {"passed": decision.passed, "reason": decision.reason, "reference": reference_name,
                       "rules": rules},
              **exported.as_dict()}
    with atomic_dir(out_dir) as tmp:
        (tmp / "deploy.json").write_text(json.dumps(record, indent=2))
    return DeployOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        registered_model=registered_model,
        version=version,
        aliases=aliases,
        uri=f"models:/{registered_model}/{version}",
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
    The compare and the set are atomic for runs sharing FTFLOW_HOME (tracking.move_alias); runs on other machines
    sharing only a tracking server keep a window of one registry call (MLflow has no compare-and-set)."""
    found = tracking.move_alias(name, tracking.CHAMPION, version, expected=compared)
    if found in (compared, version):  # moved now, or by a run that registered the same model at once with this one
        return decision
    faced = f"v{compared}" if compared else "the baseline (no champion then)"
    reason = (f"the gate passed against {faced}, but champion moved to v{found} meanwhile (another run "
              f"promoted it); v{version} stays challenger: run again to face v{found}")
    tracking.set_version_tags(name, version, {"gate.passed": "False", "gate.reason": reason})
    return replace(decision, passed=False, reason=reason)


def version_metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    return {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()
            if not k.startswith(BASELINE_PREFIXES) and not k.endswith((".ci_low", ".ci_high"))}


def gate_tags(decision: GateDecision) -> dict[str, str]:
    """The verdict, and each rule's outcome (`gate.<rule>`: passed or failed, with the reason)."""
    tags = {"gate.passed": str(decision.passed), "gate.reason": decision.reason}
    for outcome in decision.rules:
        tags[f"gate.{outcome.rule}"] = f"{'passed' if outcome.passed else 'failed'}: {outcome.reason}"
    return tags


def gate_reference(metric: str, evaluation: EvalOutput, champion: dict | None) -> Reference:
    """The champion scored on this test set (the evaluate stage scored it beside the candidate); its recorded
    score if it moved after this run pinned it; with no champion, the evaluate stage's reference (the base model;
    for classification the TF-IDF baseline; for a reward model the longer-answer baseline)."""
    if evaluation.champion is not None:
        version = evaluation.champion.rsplit("/", 1)[-1]
        return Reference(f"champion v{version}", evaluation.metrics[f"champion.{metric}"], True)
    if champion and f"metric.{metric}" in champion["tags"]:
        return Reference(f"champion v{champion['version']} (its recorded score)",
                         float(champion["tags"][f"metric.{metric}"]), False)
    name = evaluation.reference
    return Reference(REFERENCE_NAMES.get(name, name), evaluation.metrics[metric_key(name, metric)], True)
