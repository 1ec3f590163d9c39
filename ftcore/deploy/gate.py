"""The promotion gate: a list of rules (recipe `deploy.gate`), every one of which must pass for the candidate to
become champion. A failed gate is a normal outcome: the version is registered as `challenger` and the champion
stays where it was.

- `beat_champion`: the candidate improves on the champion (before the first champion: the objective's reference, e.g.
  the base model) on the metric by more than `margin`; with `confident`, the lower bound of the paired bootstrap
  interval of the improvement is above the margin too, so a lucky test split does not promote a model.
- `max_toxicity`, `max_forgetting`, `max_latency`, `max_bias`: the measured value is at most the threshold.
- `keep_sources` (a merge): on each source's own test rows, the candidate keeps at least a share of the source's
  score.
A rule whose value was not measured fails, saying so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ftcore.deploy.config import BeatChampion, GateRule, KeepSources, MaxBias, MaxForgetting, MaxLatency, MaxToxicity
from ftcore.evaluation.config import LOWER_IS_BETTER
from ftcore.evaluation.intervals import SOURCE_PREFIX


@dataclass(frozen=True)
class RuleOutcome:
    rule: str
    passed: bool
    value: float | None
    threshold: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """What the candidate must beat: its name, its score, and whether the evaluate stage scored it on this test set
    (then `improvement.<metric>` and its interval are in the evaluation's metrics)."""

    name: str
    value: float
    scored_here: bool


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    rules: list[RuleOutcome]
    improvement: float


def decide(rules: list[GateRule], metrics: dict[str, float], reference: Reference) -> GateDecision:
    """Each rule's outcome on the evaluate stage's metrics (candidate metrics bare), and the overall verdict."""
    outcomes = [_outcome(rule, metrics, reference) for rule in rules]
    failed = [o for o in outcomes if not o.passed]
    primary = next(o for o in outcomes if o.rule == "beat_champion")
    if failed:
        reason = "; ".join(f"{o.rule} failed: {o.reason}" for o in failed)
    else:
        reason = primary.reason + ("" if len(outcomes) == 1 else f"; all {len(outcomes)} rules passed")
    return GateDecision(passed=not failed, reason=reason, rules=outcomes, improvement=primary.value or 0.0)


def not_again(reference_name: str) -> GateDecision:
    """The candidate is the champion itself (an unchanged model evaluated again): nothing to decide or promote."""
    return GateDecision(False, f"the candidate is {reference_name} itself (the same trained model): nothing to "
                               "promote", [], 0.0)


def _outcome(rule: GateRule, metrics: dict[str, float], reference: Reference) -> RuleOutcome:
    match rule:
        case BeatChampion():
            return _beats(rule, metrics, reference)
        case MaxToxicity():
            return _at_most(rule.rule, "toxic-output rate", metrics.get("toxic_rate"), rule.max)
        case MaxForgetting():
            return _at_most(rule.rule, f"forgetting.{rule.metric}", metrics.get(f"forgetting.{rule.metric}"),
                            rule.max)
        case MaxLatency():
            return _at_most(rule.rule, "p95 latency (s)", metrics.get("latency_p95_s"), rule.max_s)
        case MaxBias():
            return _at_most(rule.rule, "counterfactual divergence", metrics.get("bias_divergence"), rule.max,
                            missing="no test or probe prompt had a term to swap; add evaluate.safety.bias.prompts")
        case KeepSources():
            return _keeps_sources(rule, metrics)
    raise TypeError(f"unknown gate rule {rule!r}")


def _beats(rule: BeatChampion, metrics: dict[str, float], reference: Reference) -> RuleOutcome:
    metric, candidate = rule.metric, metrics[rule.metric]
    if reference.scored_here:
        improvement = metrics[f"improvement.{metric}"]
        low = metrics.get(f"improvement.{metric}.ci_low", math.nan)
    else:  # the champion's recorded score: no paired interval
        improvement = reference.value - candidate if metric in LOWER_IS_BETTER else candidate - reference.value
        low = math.nan
    passed = improvement > rule.margin
    reason = (f"{metric} {candidate:.4g} {'beats' if passed else 'does not beat'} {reference.name} "
              f"{reference.value:.4g} by more than {rule.margin:g} (improvement {improvement:+.4g}")
    if rule.confident and not math.isnan(low):
        confident = low > rule.margin
        reason += f", lower confidence bound {low:+.4g}{'' if confident else ' not above the margin'})"
        passed = passed and confident
    else:
        reason += ", no interval)" if rule.confident else ")"
    return RuleOutcome(rule.rule, passed, improvement, rule.margin, reason)


def _at_most(rule: str, what: str, value: float | None, threshold: float,
             missing: str = "not measured by the evaluate stage") -> RuleOutcome:
    if value is None or math.isnan(value):
        return RuleOutcome(rule, False, None, threshold, f"{what}: {missing}")
    passed = value <= threshold
    return RuleOutcome(rule, passed, value, threshold,
                       f"{what} {value:.4g} {'is within' if passed else 'exceeds'} the maximum {threshold:g}")


def _keeps_sources(rule: KeepSources, metrics: dict[str, float]) -> RuleOutcome:
    """The smallest share of its source's score that the candidate keeps on a source's task."""
    metric = str(rule.metric)
    lower = metric in LOWER_IS_BETTER
    kept, parts = {}, []
    for task, (ours, theirs) in sorted(source_scores(metrics, metric).items()):
        kept[task] = (theirs / ours if ours else math.inf) if lower else (ours / theirs if theirs else math.inf)
        parts.append(f"{task} {ours:.4g} against {theirs:.4g}")
    if not kept:
        return RuleOutcome(rule.rule, False, None, rule.share, f"no source was scored on {metric} (a rule for a "
                                                              "merge: recipe)")
    worst = min(kept, key=kept.get)
    passed = kept[worst] >= rule.share
    return RuleOutcome(rule.rule, passed, kept[worst], rule.share,
                       f"{metric} on each source's test rows: {'; '.join(parts)}; {worst} keeps {kept[worst]:.1%} of "
                       f"its source's ({'at least' if passed else 'under'} {rule.share:.0%})")


def source_scores(metrics: dict[str, float], metric: str) -> dict[str, tuple[float, float]]:
    """task -> (the candidate's, its source's) `metric` on the source's own test rows: `<metric>.<task>` and
    `source_<task>.<metric>.<task>`."""
    found = {}
    for key, theirs in metrics.items():
        rest = key.removeprefix(SOURCE_PREFIX)
        size = (len(rest) - len(metric) - 2) // 2  # rest is `<task>.<metric>.<task>`
        task = rest[:size]
        if key.startswith(SOURCE_PREFIX) and size > 0 and rest == f"{task}.{metric}.{task}" \
                and f"{metric}.{task}" in metrics:
            found[task] = (metrics[f"{metric}.{task}"], theirs)
    return found
