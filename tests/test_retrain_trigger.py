"""Which breach events start a production retraining: the automation `ftflow deploy` registers for `retrain`, judged
with the Prefect server's own trigger matching against the events the monitor really emits. Only the scheduled
monitor's breach of the champion may start one (docs/monitoring.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.fixtures import asserting_events_worker  # noqa: F401  registers the fixture used below
from typer.testing import CliRunner

from flows.cli import app
from ftcore import tracking, versions
from tasks.monitor import BREACH_EVENT, announce_breach
from tests.conftest import DEMO_RECIPE

pytestmark = pytest.mark.usefixtures("prefect_harness")


def registered_retrain_trigger():
    """The retrain deployment's automation trigger as `ftflow deploy --recipe` registers it, in the server's form
    (whose `covers(event)` is what the server's trigger service asks of every event)."""
    from prefect.client.orchestration import get_client
    from prefect.server.events.schemas.automations import EventTrigger

    deployed = CliRunner().invoke(app, ["deploy", "--recipe", str(DEMO_RECIPE)])
    assert deployed.exit_code == 0, deployed.output
    with get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name("retrain/retrain")
        [automation] = client.read_resource_related_automations(f"prefect.deployment.{retrain.id}")
    return EventTrigger.model_validate(automation.trigger.model_dump())


def register_versions(name: str, tmp: Path) -> tuple[str, str]:
    """Two versions as the pipeline leaves them when the second one fails the gate: (champion, challenger)."""
    run_id = tracking.start_pipeline_run(name, "run", {"name": name}, {})
    model_dir = tmp / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    champion, challenger = (versions.register_version(run_id, name, model_dir, {}) for _ in range(2))
    versions.set_alias(name, versions.CHAMPION, champion)
    versions.set_alias(name, versions.CHALLENGER, challenger)
    return champion, challenger


def test_only_the_scheduled_monitor_s_breach_of_the_champion_starts_a_retraining(tmp_path, request):
    from prefect.server.events.schemas.events import ReceivedEvent

    events = request.getfixturevalue("asserting_events_worker")
    trigger = registered_retrain_trigger()
    name = "clinical-qa"  # the demo recipe's registered model, which the trigger watches
    champion, challenger = register_versions(name, tmp_path)
    reports = [(champion, "pipeline"), (challenger, "pipeline"), (champion, "schedule"), (challenger, "schedule")]
    for version, source in reports:
        announce_breach(name, version, ["latency_p95_s"], {"latency_p95_s": 9.0}, tmp_path / "report.html", source)
    events.wait_until_empty()
    emitted = [e for e in events._client.events if e.event == BREACH_EVENT]
    assert [e.resource["ftflow.model.version"] for e in emitted] == [version for version, _ in reports]
    # Was: every one of them, the pipeline stage's breach of a version that failed the gate among them.
    started = [report for report, event in zip(reports, emitted, strict=True)
               if trigger.covers(ReceivedEvent.model_validate(event.model_dump()))]
    assert started == [(champion, "schedule")]
