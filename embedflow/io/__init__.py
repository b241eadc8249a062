"""Sources (where rows come from) and sinks (where they go)."""
