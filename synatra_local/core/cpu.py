"""How many threads llama.cpp should use: one per physical core this process may run on.

Matrix-vector decoding is bound by memory bandwidth and each core's SIMD units; a second hyperthread on
the same core adds contention, not throughput, which is why llama.cpp itself defaults to physical cores.
(llama-cpp-python's own default, half the logical CPUs, halves decode speed where cores have one thread.)
"""

from __future__ import annotations

import os
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")


def allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None, sysfs: Path = SYSFS_CPU) -> int:
    """Distinct cores among `cpus` (default: this process's affinity), from the kernel's CPU topology.

    Falls back to the number of CPUs where the topology cannot be read (not Linux, or a sandbox).
    """
    cpus = allowed_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        try:
            siblings = (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip()
        except OSError:
            return max(len(cpus), 1)
        cores.add(siblings)
    return max(len(cores), 1)
