"""clinseg pipeline: engines, losses, metrics, MLflow tracking, prediction, reports and the command line."""
