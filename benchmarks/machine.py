"""Benchmark scripts import the machine description from here (it lives in :mod:`cardiomm.machine`)."""

from cardiomm.machine import machine_info, machine_line

__all__ = ["machine_info", "machine_line"]
