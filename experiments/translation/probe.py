"""The paper's Table 5: mean and standard deviation of the decoder GRU's hidden-to-hidden pre-activation.

The probe is a forward hook on the first decoder GRU's hidden-side norm (`cell1.norm_h`; the cell steps in
Python while it probes, since the native op does not call that module): what it returns,
N(U h_{t-1}) for every gate block ([U_r; U_u] h and U_x h; plain U h with norm=none), is the hidden side's
contribution to the gates' pre-activation. Teacher-forced over a set's sentences; position t is the t-th
target token (1-based), padding excluded; ALL pools every position.
"""

from __future__ import annotations

import math

import torch

from experiments.translation import data as D

POSITIONS = (1, 2, 3, 4)


class _Moments:
    def __init__(self):
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, values: torch.Tensor) -> None:
        values = values.double()
        self.n += values.numel()
        self.total += float(values.sum())
        self.squares += float((values * values).sum())

    def mean_std(self) -> tuple[float, float]:
        if self.n == 0:
            return math.nan, math.nan
        mean = self.total / self.n
        return mean, math.sqrt(max(self.squares / self.n - mean * mean, 0.0))


@torch.no_grad()
def preactivation_stats(model, enc: D.Encoded, device: torch.device, batch_size: int = 64,
                        limit: int | None = None) -> dict[str, tuple[float, float]]:
    """{'1': (mean, std), ..., '4': ..., 'all': ...} over the first `limit` sentences of `enc` (all: None)."""
    steps: list[torch.Tensor] = []
    handle = model.cell1.norm_h.register_forward_hook(lambda module, args, out: steps.append(torch.cat(out, -1)))
    moments = {str(p): _Moments() for p in POSITIONS} | {"all": _Moments()}
    was_training, was_native = model.training, model.cell1.native
    model.eval()
    model.cell1.native = False  # the native op never calls norm_h: the probe reads the Python step (same values)
    try:
        n = len(enc) if limit is None else min(limit, len(enc))
        for start in range(0, n, batch_size):
            pairs = [enc.pair(i) for i in range(start, min(start + batch_size, n))]
            src = D.pad_batch([s for s, _ in pairs], bos=False, eos=True).to(device)
            tgt = D.pad_batch([t for _, t in pairs], bos=True, eos=True).to(device)
            steps.clear()
            model(src, (src != D.PAD).float(), tgt[:-1])
            for t, values in enumerate(steps, start=1):
                real = values[tgt[t] != D.PAD]  # the rows whose target at this position is a token
                moments["all"].add(real)
                if str(t) in moments:
                    moments[str(t)].add(real)
    finally:
        handle.remove()
        model.train(was_training)
        model.cell1.native = was_native
    return {key: m.mean_std() for key, m in moments.items()}
