"""train: training loop, schedules and checkpoints (built on infer and seq2seq)."""
