"""The promotion gate: the candidate must beat the reference (the champion, or the base model when there is no
champion yet) on the gate metric by more than `min_improvement`."""

from __future__ import annotations

from dataclasses import dataclass

from ftcore.config import LOWER_IS_BETTER, GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    improvement: float


def decide(cfg: GateConfig, candidate: float, reference: float, reference_name: str) -> GateDecision:
    improvement = reference - candidate if cfg.metric in LOWER_IS_BETTER else candidate - reference
    passed = improvement > cfg.min_improvement
    verdict = "beats" if passed else "does not beat"
    reason = (
        f"{cfg.metric} {candidate:.4g} {verdict} {reference_name} {reference:.4g} "
        f"by more than {cfg.min_improvement:g} (improvement {improvement:+.4g})"
    )
    return GateDecision(passed=passed, reason=reason, improvement=improvement)
