"""Training: the objective (`objectives`); the trainer, stages, parallelism, LoRA and checkpoints arrive with the
training issue."""
