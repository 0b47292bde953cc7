"""tl's Optuna sweeper as a Hydra plugin (Hydra instantiates sweepers only from the hydra_plugins package)."""
