"""embedflow's built-in operators. They are registered only through the entry points in
pyproject.toml (group ``embedflow.operators``), exactly as a third-party package's would be."""
