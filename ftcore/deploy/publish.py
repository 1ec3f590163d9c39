"""deploy stage: register a new model version (alias `challenger`) and move `champion` only when the gate passes."""

from __future__ import annotations

import json
from pathlib import Path

from ftcore import tracking
from ftcore.config import GateConfig
from ftcore.deploy.gate import GateDecision, decide
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.outputs import DeployOutput, EvalOutput, TrainOutput

CANDIDATE = "candidate"
MODEL_HASH_TAG = "model_hash"  # a version's tag: the content hash of the train stage's output it registered
REFERENCE_NAMES = {"base": "the base model", "tfidf": "the TF-IDF + logistic regression baseline",
                   "length": "the baseline preferring the longer answer"}


def publish(
    trained: TrainOutput,
    evaluation: EvalOutput,
    gate: GateConfig,
    registered_model: str,
    mlflow_run_id: str,
    tags: dict[str, str],
    out_dir: Path,
) -> DeployOutput:
    candidate = evaluation.metrics[f"{CANDIDATE}.{gate.metric}"]
    champion = tracking.version_for_alias(registered_model, tracking.CHAMPION)
    if champion and champion["tags"].get(MODEL_HASH_TAG) == trained.content_hash:
        reference_name = f"champion v{champion['version']}"
        decision = GateDecision(False, f"the candidate is {reference_name} itself (the same trained model): "
                                       "nothing to promote", 0.0)
    else:
        reference_name, reference = gate_reference(gate.metric, evaluation, champion)
        decision = decide(gate, candidate, reference, reference_name)
    # The candidate's own metrics, and what it forgot (continual fine-tuning), as the version's tags.
    candidate_metrics = {
        f"metric.{k.removeprefix(CANDIDATE + '.')}": f"{v:.6g}"
        for k, v in evaluation.metrics.items()
        if k.startswith((CANDIDATE + ".", "forgetting."))
    }
    version = tracking.register_version(
        mlflow_run_id,
        registered_model,
        trained.model_path,
        tags={**tags, **candidate_metrics, "gate.passed": str(decision.passed), "gate.reason": decision.reason},
    )
    tracking.set_alias(registered_model, tracking.CHALLENGER, version)
    if decision.passed:
        tracking.set_alias(registered_model, tracking.CHAMPION, version)
    aliases = tracking.aliases_of(registered_model, version)
    record = {"registered_model": registered_model, "version": version, "aliases": aliases,
              "gate": {"passed": decision.passed, "reason": decision.reason, "reference": reference_name}}
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
        metrics={"version": float(version), "gate_passed": float(decision.passed),
                 "gate_improvement": decision.improvement},
        artifacts={"decision": out_dir / "deploy.json"},
    )


def gate_reference(metric: str, evaluation: EvalOutput, champion: dict | None) -> tuple[str, float]:
    """The champion's score on this test set (the evaluate stage scored it beside the candidate); its recorded
    score if it moved after this run pinned it; with no champion, the evaluate stage's reference (the base model;
    for classification the TF-IDF baseline; for a reward model the longer-answer baseline)."""
    if evaluation.champion is not None:
        version = evaluation.champion.rsplit("/", 1)[-1]
        return f"champion v{version}", evaluation.metrics[f"champion.{metric}"]
    if champion and f"metric.{metric}" in champion["tags"]:
        return f"champion v{champion['version']} (its recorded score)", float(champion["tags"][f"metric.{metric}"])
    name = evaluation.reference
    return REFERENCE_NAMES.get(name, name), evaluation.metrics[f"{name}.{metric}"]
