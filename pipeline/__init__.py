"""Pipeline orchestration: CLI, stage graph, caching and MLflow tracking."""
