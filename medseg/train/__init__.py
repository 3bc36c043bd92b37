"""Training and evaluation: datasets of image/label NIfTI pairs, Dice+CE loops, metrics."""
