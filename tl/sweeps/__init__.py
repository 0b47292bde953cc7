"""Many runs as one: a sweep's parent run and its comparison of configurations, and tl's Optuna sweeper with
its stored studies."""
