"""Control-plane logic: settings, store, planner, launcher and reconciler, results, scheduler, MLflow tracking."""
