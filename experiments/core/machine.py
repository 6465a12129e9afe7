"""What machine a measurement was taken on, in words a reader can compare across runs."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and the number of threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if found:
            cpu = found.group(1).strip()
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"
