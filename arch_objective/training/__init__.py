"""The t5x-style trainer: partitioning, optimiser and schedules, train state, the pure
train step, checkpoints, metrics, and the gin-configured `train()` entry point."""
