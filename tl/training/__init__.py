"""The fit: the epoch loop, strategies (what trains), frozen features, checkpoints and schedules."""
