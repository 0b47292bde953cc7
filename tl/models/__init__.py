"""The network: pretrained backbones with a new head and the preprocessing they expect, and the model as
MLflow logs and serves it (its pyfunc code and its format)."""
