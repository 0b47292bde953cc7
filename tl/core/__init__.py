"""The ground every layer stands on: the user-error type and how the CLIs end, config checks, metric
names, devices and precision, torchrun processes, signals, provenance. No torch at import."""
