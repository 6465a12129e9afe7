"""The paper's experiments: one package per task, sharing the training core in `experiments.core`."""
