"""Datasets tl ships or fetches: the Fashion-MNIST sample (and how it was built), the tutorial's download."""
