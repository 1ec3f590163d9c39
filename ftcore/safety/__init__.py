"""Safety checks shared by the data stages and the monitor stage (toxicity scoring)."""
