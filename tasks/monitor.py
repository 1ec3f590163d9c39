from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

import ftcore.monitor
from ftcore.config import MonitorConfig
from ftcore.monitor.probe import monitor_version
from ftcore.outputs import DatasetOutput, DeployOutput, MonitorOutput
from ftcore.paths import stage_dir
from tasks.common import stage_inputs, stage_task


@stage_task("monitor", code=[ftcore.monitor])
def monitor(deployed: DeployOutput, dataset: DatasetOutput, monitor: MonitorConfig) -> MonitorOutput:
    """Probe the newly registered version and check latency, error rate and toxicity against the objectives."""
    out_dir = stage_dir("monitor", stage_inputs(deployed=deployed.content_hash, dataset=dataset.content_hash,
                                                monitor=monitor))
    out = monitor_version(deployed.registered_model, deployed.version, dataset.splits["test"], monitor, out_dir)
    report = out.artifacts["report"].read_text(encoding="utf-8")
    create_markdown_artifact(report, key=f"monitor-{_artifact_key(deployed.registered_model)}",
                             description=f"{deployed.registered_model} v{deployed.version}")
    m = out.metrics
    get_run_logger().info("latency p50 %.3f s, p95 %.3f s; error rate %.2f%%; toxic %.2f%%; %s",
                          m["latency_p50_s"], m["latency_p95_s"], 100 * m["error_rate"], 100 * m["toxicity_rate"],
                          "; ".join(out.breaches) or "no breach")
    return out


def _artifact_key(name: str) -> str:
    # Prefect artifact keys allow lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in name.lower())
