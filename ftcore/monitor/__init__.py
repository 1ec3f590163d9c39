"""The monitor: a served model's traffic over a window against its objectives (latency, 5xx errors, toxic outputs,
canary accuracy, input drift), as the pipeline's last stage (`stage.py`) and as the scheduled flow's pass
(`scheduled.py`); `assess.py` ties the measures together, `record.py` writes and logs the report."""
