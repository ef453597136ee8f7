"""MLflow: the store, the durable journal and its replay, the resilient handler, run tags and run artifacts."""
