"""Default thread count: one per physical core, read from the kernel's CPU topology."""

from __future__ import annotations

from pathlib import Path

import pytest

from synatra_local.core.cpu import allowed_cpus, physical_cores


def fake_sysfs(root: Path, siblings: dict[int, str]) -> Path:
    for cpu, listed in siblings.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(listed + "\n")
    return root


def test_hyperthreads_count_once(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {0: "0,4", 1: "1,5", 2: "2,6", 3: "3,7", 4: "0,4", 5: "1,5", 6: "2,6", 7: "3,7"})
    assert physical_cores(set(range(8)), sysfs) == 4


def test_one_thread_per_core_counts_every_cpu(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {0: "0", 1: "1"})
    assert physical_cores({0, 1}, sysfs) == 2


def test_only_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {0: "0-1", 1: "0-1", 2: "2-3", 3: "2-3"})
    assert physical_cores({0, 1}, sysfs) == 1
    assert physical_cores({1, 2}, sysfs) == 2


def test_unreadable_topology_falls_back_to_the_cpu_count(tmp_path: Path) -> None:
    assert physical_cores({0, 1, 2}, tmp_path) == 3


def test_this_machine() -> None:
    cores = physical_cores()
    assert 1 <= cores <= len(allowed_cpus())


@pytest.fixture(scope="module")
def model(tiny_gguf_v01: Path):
    from synatra_local.core.llama_backend import LlamaModel

    loaded = LlamaModel(tiny_gguf_v01, n_ctx=256)
    yield loaded
    loaded.close()


def test_models_default_to_one_thread_per_physical_core(model) -> None:
    assert model.n_threads == physical_cores()
