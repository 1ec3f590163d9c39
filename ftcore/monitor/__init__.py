"""The monitor stage: probe a registered version and compare latency, errors and toxicity with the objectives."""
