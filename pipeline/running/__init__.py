"""Running stages: the command line, the runner, the stage records, preflight, MLflow tracking, the training task."""
