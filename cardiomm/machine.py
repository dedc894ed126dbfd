"""Describe the machine a benchmark ran on (for every JSON and Markdown report)."""

from __future__ import annotations

import os
import platform

import torch

from cardiomm.allocator import allocator_tuned


def machine_info(device: torch.device | str | None = None) -> dict[str, object]:
    """CPU, core count, torch version and (if used) the GPU name."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "malloc_tuned": allocator_tuned(),
    }
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info["device"] = str(dev)
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def machine_line(info: dict[str, object]) -> str:
    """One human-readable line."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (
        f"{info['cpu_cores']} CPU cores ({info['processor']}), torch {info['torch']} "
        f"with {info['torch_threads']} threads, device {info['device']}{gpu}"
        + ("" if info.get("malloc_tuned") is None else f", glibc malloc tuned: {'yes' if info['malloc_tuned'] else 'no'}")
    )
