"""Shared benchmark helpers: run a child process and sample its peak anonymous memory; drop page caches."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {_mem_gib():.0f} GiB RAM, Python {platform.python_version()}"


def _mem_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / (1 << 20)


def drop_caches() -> bool:
    """Cold-cache timing where the kernel allows it (root on a real kernel); False where it does not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run_measured(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak anonymous RSS (bytes, sampled every 20 ms) of a child process."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    peak = 0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.02)
    if child.returncode:
        sys.exit(f"{argv} failed with exit code {child.returncode}")
    return time.perf_counter() - start, peak
