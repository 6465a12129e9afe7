"""The training loop and what it asks of a task: `Task` (batches, loss, evaluation) and its config schema, the
optimiser step owned once for every task (backward, clipping, accumulation, DDP), the trainer (evaluation,
checkpoints, resume), `run` (one run from a composed config), seeding, data parallelism under torchrun, the three
clocks of a step and the interleaved timing of several variants, and the experiment loggers."""
