"""Named experiment presets (Hydra configs in experiment/), found on Hydra's search path as pkg://experiments."""
