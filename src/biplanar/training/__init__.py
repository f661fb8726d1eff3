"""Training: the loss, the trainer, checkpoints and distributed set-up."""
