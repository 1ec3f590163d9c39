"""The run summary: what each stage did, written to `$FTFLOW_HOME/runs/<run_id>/summary.json` and shown as a table."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcore.fs import atomic_write_text
from ftcore.locks import Lease
from ftcore.paths import home
from ftcore.stages import STAGES
from ftcore.versions import CHAMPION

# The metrics worth a glance in the terminal; everything is in summary.json and MLflow.
KEY_METRICS = {
    "collect": ["rows_in", "rows_quarantined"],
    "clean_balance": ["rows_kept", "rows_quarantined", "rows_train", "rows_test"],
    "init": ["trainable_params", "trainable_fraction"],
    "train": ["steps", "train_loss_first", "train_loss_last", "eval_loss", "eval_reward_accuracy", "mean_reward_first",
              "mean_reward_last", "groups_scored_alike", "replayed_rows"],
    "evaluate": ["base.exact_match", "fewshot.exact_match", "champion.exact_match", "exact_match", "base.perplexity",
                 "perplexity", "tfidf.macro_f1", "macro_f1", "length.reward_accuracy", "reward_accuracy",
                 "base.mean_reward", "mean_reward", "toxic_rate", "forgetting.exact_match", "forgetting.perplexity"],
    "deploy": ["version", "gate_passed"],
    "monitor": ["latency_p95_s", "error_rate", "toxic_rate", "canary_accuracy", "drift_score"],
}


@dataclass
class RunSummary:
    run_id: str
    mlflow_run_id: str
    recipe_hash: str
    recipe_path: str
    overrides: list[str] = field(default_factory=list)  # the run's changes to the recipe file (--set, the form)
    dataset_hash: str | None = None
    stages: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {s.value: {"status": "skipped", "duration_s": 0.0, "metrics": {}, "artifacts": {}}
                                 for s in STAGES}
    )
    model: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    breaches: list[str] = field(default_factory=list)  # the objectives the monitor stage found breached
    failure: str | None = None
    failure_is_user_error: bool = False
    lease: Lease | None = field(default=None, repr=False, compare=False)  # held while the run lives; not written
    # Where to look next, last in summary.json as in the printed summary: the run and the version in MLflow's UI.
    mlflow_run_url: str | None = None
    model_version_url: str | None = None

    def record(self, stage: str, status: str, duration_s: float, metrics=None, artifacts=None, error=None,
               user_error: bool = False) -> None:
        entry = {"status": status, "duration_s": round(duration_s, 3), "metrics": metrics or {},
                 "artifacts": {k: str(v) for k, v in (artifacts or {}).items()}}
        if error:
            entry["error"] = error
            self.failure = f"stage {stage} failed: {error}"
            self.failure_is_user_error = user_error
        self.stages[stage] = entry
        # One line per stage as it ends, in `ftflow run`'s terminal and a worker's (its flow runs' stderr): the
        # progress a quiet run shows before its table.
        print(stage_line(stage, entry), file=sys.stderr, flush=True)

    @property
    def succeeded(self) -> bool:
        return self.failure is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mlflow_run_id": self.mlflow_run_id,
            "recipe_hash": self.recipe_hash,
            "recipe_path": self.recipe_path,
            "overrides": self.overrides,
            "dataset_hash": self.dataset_hash,
            "stages": self.stages,
            "model": self.model,
            "gate": self.gate,
            "breaches": self.breaches,
            "succeeded": self.succeeded,
            "failure": self.failure,
            "failure_is_user_error": self.failure_is_user_error,
            "mlflow_run_url": self.mlflow_run_url,
            "model_version_url": self.model_version_url,
        }

    def write(self) -> Path:
        path = home() / "runs" / self.run_id / "summary.json"
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return path


@dataclass(frozen=True)
class Outcome:
    """What a run's reader must know although no stage failed: the flow run ends Completed under `state` as its
    name, with `message` (flows/finetune.py: end_state), and the table's footer says `message`."""

    state: str
    message: str


def outcomes(summary: dict[str, Any]) -> list[Outcome]:
    """A gate that kept the champion, a candidate that is the champion already, breached objectives; in that
    order."""
    found = []
    model, gate = summary.get("model"), summary.get("gate")
    if model and gate and not gate["passed"]:
        version = f"v{model['version']}"
        found.append(Outcome("Unchanged", f"{version} is the champion already: nothing to promote")
                     if CHAMPION in model["aliases"] else
                     Outcome("Gate failed", f"gate failed: {version} stays challenger"))
    if summary.get("breaches"):
        found.append(Outcome("Monitor breach", f"monitor breach: {', '.join(summary['breaches'])}"))
    return found


def run_description(summary: dict[str, Any]) -> str:
    """What the run came to, for the top of its MLflow page: the registered version and the gate's verdict, the
    outcomes a reader must know, the failure, the changes to the recipe."""
    lines = []
    model, gate = summary.get("model"), summary.get("gate")
    if model and gate:
        verdict = "Gate passed" if gate["passed"] else "Gate failed"
        lines.append(f"[{model['name']} v{model['version']}]({summary['model_version_url']}) "
                     f"({', '.join(model['aliases'])}). **{verdict}**: {gate['reason']}")
    lines += [f"**{o.message}**" for o in outcomes(summary)]
    if summary.get("failure"):
        lines.append(f"**Failed**: {summary['failure']}")
    if summary.get("overrides"):
        lines.append("Recipe overrides: " + ", ".join(f"`{o}`" for o in summary["overrides"]))
    return "\n\n".join(lines)


def stage_line(stage: str, entry: dict[str, Any]) -> str:
    """`✓ collect 0.4 s`, `✓ init 0.0 s (cached)`, `✗ train 3.1 s: <error>`."""
    line = f"{'✗' if entry.get('error') else '✓'} {stage} {entry['duration_s']:.1f} s"
    if entry.get("error"):
        return f"{line}: {entry['error']}"
    return f"{line} (cached)" if entry["status"] == "cached" else line


def render_table(summary: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"ftflow run {summary['run_id']}", title_justify="left")
    footer = [f"[yellow]{o.message}[/]" for o in outcomes(summary)]
    if summary.get("overrides"):
        footer.append(f"recipe overrides: {', '.join(summary['overrides'])}")
    table.caption, table.caption_justify = "\n".join(footer) or None, "left"
    for column in ("stage", "status", "duration", "key metrics"):
        table.add_column(column)
    colours = {"completed": "green", "cached": "cyan", "failed": "red", "skipped": "dim"}
    for stage, entry in summary["stages"].items():
        breached = set(summary.get("breaches", [])) if stage == "monitor" else set()
        shown = [f"[red]{k}={_fmt(entry['metrics'][k])} breached[/]" if k in breached else
                 f"{k}={_fmt(entry['metrics'][k])}" for k in KEY_METRICS.get(stage, []) if k in entry["metrics"]]
        shown += quarantined_by_step(entry["metrics"])
        if stage == "deploy" and summary.get("gate"):
            shown += [f"[red]{rule['rule']} failed[/]" for rule in summary["gate"]["rules"] if not rule["passed"]]
        if entry.get("error"):
            shown = [entry["error"]]
        status = entry["status"]
        table.add_row(stage, f"[{colours.get(status, 'white')}]{status}[/]", f"{entry['duration_s']:.1f}s",
                      ", ".join(shown))
    return table


def quarantined_by_step(metrics: dict[str, float]) -> list[str]:
    """`<step> quarantined N` for each cleaning step that set rows aside (`<step>.rows_quarantined`), in step order:
    which step to look at before opening the quarantine."""
    suffix = ".rows_quarantined"
    return [f"{key.removesuffix(suffix)} quarantined {_fmt(n)}" for key, n in metrics.items()
            if key.endswith(suffix) and n > 0]


def _fmt(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return str(int(value)) if isinstance(value, float) else str(value)
