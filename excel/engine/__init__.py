"""Training: the loop, one iteration, losses, the optimiser and its learning-rate schedule."""
