"""Datasets tl ships: the Fashion-MNIST sample and how it was built."""
