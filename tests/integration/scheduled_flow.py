"""A flow that finishes at once, for the integration test's cron deployment: what is under test is the server's
scheduler creating its runs and a worker executing one, not what the flow does."""

from prefect import flow


@flow(name="tick")
def tick() -> str:
    return "tick"
