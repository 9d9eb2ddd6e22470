"""The converter's read-ahead thread: order kept, memory bounded, errors raised where they belong, stops cleanly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from synatra_local.convert.read_ahead import ReadAhead


def _job(values: list[int], nbytes: int = 8):
    def make():
        for v in values:
            yield np.full(nbytes // 8, v, dtype=np.int64)

    return make


def test_chunks_come_back_per_job_in_order() -> None:
    jobs = [("a", _job([1, 2, 3])), ("b", _job([])), ("c", _job([4]))]
    with ReadAhead(jobs, limit=1 << 20) as ahead:
        assert [int(c[0]) for c in ahead.chunks("a")] == [1, 2, 3]
        assert list(ahead.chunks("b")) == []
        assert [int(c[0]) for c in ahead.chunks("c")] == [4]


def test_queued_bytes_stay_within_the_limit() -> None:
    produced: list[int] = []

    def make():
        for i in range(50):
            produced.append(i)
            yield np.zeros(1024, dtype=np.uint8)

    with ReadAhead([("big", make)], limit=4096) as ahead:
        chunks = ahead.chunks("big")
        next(chunks)
        time.sleep(0.2)  # the thread runs as far ahead as it may
        # 4 chunks queued, one waiting to be queued, one taken: never the whole job
        assert len(produced) <= 6, produced
        assert sum(1 for _ in chunks) == 49


def test_a_jobs_error_is_raised_by_its_own_chunks_after_the_earlier_jobs() -> None:
    def broken():
        yield np.zeros(1, dtype=np.uint8)
        raise EOFError("source ended 10 bytes early")

    with ReadAhead([("fine", _job([7])), ("broken", broken), ("never", _job([1]))], limit=1 << 20) as ahead:
        assert [int(c[0]) for c in ahead.chunks("fine")] == [7]
        chunks = ahead.chunks("broken")
        next(chunks)
        with pytest.raises(EOFError, match="10 bytes early"):
            next(chunks)


def test_taking_jobs_out_of_order_is_refused() -> None:
    with ReadAhead([("a", _job([1])), ("b", _job([2]))], limit=1 << 20) as ahead, pytest.raises(RuntimeError):
        list(ahead.chunks("b"))


def test_close_stops_a_thread_waiting_for_room() -> None:
    def endless():
        while True:
            yield np.zeros(1024, dtype=np.uint8)

    ahead = ReadAhead([("endless", endless)], limit=2048)
    time.sleep(0.1)
    ahead.close()  # the writer gave up (Ctrl-C): the thread must not keep the process or its files
    assert not any(t.name == "read-ahead" and t.is_alive() for t in threading.enumerate())
