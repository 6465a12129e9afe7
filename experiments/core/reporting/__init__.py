"""Reading results back: the paper's tables rebuilt from the runs' summary.json files beside the paper's numbers,
a sweep's outcome from its runs' own files, plots, the W&B comparison workspaces, and the invariance table
(the paper's Table 1, measured)."""
