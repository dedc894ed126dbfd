"""glibc malloc tuning of the cardiomm command (cardiomm.allocator)."""

from __future__ import annotations

import sys

import pytest
import torch

from cardiomm.allocator import ENV_SWITCH, allocator_tuned, release_free_memory, tune_cpu_allocator
from cardiomm.machine import machine_info, machine_line


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert tune_cpu_allocator() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applied_on_linux_and_reported_with_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert tune_cpu_allocator() is True and allocator_tuned()
    info = machine_info("cpu")
    assert info["malloc_tuned"] is True and "malloc tuned: yes" in machine_line(info)
    big = torch.ones(64, 1024, 1024)  # large tensors still allocate and free normally
    assert float(big.sum()) == 64 * 1024 * 1024
    del big
    assert release_free_memory() is True


def test_rejects_a_negative_threshold() -> None:
    with pytest.raises(ValueError, match="trim_threshold_bytes"):
        tune_cpu_allocator(-1)
