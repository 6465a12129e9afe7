"""What every task shares, by concern:

- `training/`: the loop (trainer, the optimiser step, a run from a config), the task contract and its config
  checks, seeding, data parallelism, the clocks and interleaved timing, the loggers;
- `data/`: batching (ragged sequences, length buckets, token budgets), downloads, vocabularies, batches built in
  a worker process;
- `reporting/`: the paper's tables rebuilt from the runs' files, sweeps read back, plots, W&B dashboards, the
  invariance table;
- here, what all three use: user errors, atomic writes, a run's identity and provenance, its records, the
  machine's name.

Imports point one way: tasks -> core; `reporting` reads what `training` wrote through `records`, not the loop."""
