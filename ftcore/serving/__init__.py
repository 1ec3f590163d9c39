"""The HTTP endpoint (`ftflow serve`): OpenAI-compatible completions, classification, dynamic batching, a response
cache, auth, limits, hot reload, and the request log the monitor reads."""
