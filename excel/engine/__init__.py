"""Training: the loop, one iteration, losses, learning-rate schedule, checkpoints."""
