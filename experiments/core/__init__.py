"""What every task shares: the training loop, timing, records, checkpoints, loggers, seeding and errors."""
