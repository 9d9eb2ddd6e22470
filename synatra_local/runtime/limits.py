"""The range of every numeric option, checked where values come in (CLI, Python API, server).

llama.cpp takes these as C integers and floats and checks few of them: a negative context wraps around to a
huge allocation, a negative batch crashes, a large top-k overflows its int32, seed 2^32-1 means "random". So
nothing reaches it unchecked: an out-of-range value is an `OptionError` that names the option and its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from synatra_local.core.errors import SynatraError

INT32_MAX = 2**31 - 1
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a seed it replaces with a random one
SEED_MAX = RANDOM_SEED - 1


class OptionError(SynatraError, ValueError):
    """A numeric option outside its range (or not a number)."""


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    integer: bool
    low_open: bool = False  # low itself is not allowed
    note: str = ""
    fix: str = ""

    def contains(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = _number(self.low)
        span = f"greater than {low} and at most" if self.low_open else f"from {low} to"
        return f"{kind} {span} {_number(self.high)}" + (f" ({self.note})" if self.note else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# Keyed by the Python API's names; the CLI shows its flags (`--top-p`), the server its JSON fields.
RANGES: dict[str, Range] = {
    "n_ctx": Range(1, 1 << 20, True, note="llama.cpp rounds it up to a multiple of 256"),
    "batch": Range(1, 1 << 16, True),
    "threads": Range(1, 512, True),
    "chunks": Range(1, 1 << 20, True),
    "max_tokens": Range(1, 1 << 20, True),
    "temperature": Range(0, 2, False, note="0 = greedy"),
    "top_p": Range(0, 1, False),
    "top_k": Range(0, INT32_MAX, True, note="0 = off"),
    "min_p": Range(0, 1, False),
    "repeat_penalty": Range(0, 10, False, low_open=True, note="1 = off"),
    "parallel": Range(1, 256, True, note="sequences decoded together"),
    "logprobs": Range(0, 20, True, note="alternatives reported per token"),
    "seed": Range(0, SEED_MAX, True, fix="leave the seed out for a random one (llama.cpp keeps 4294967295 for that)"),
    # the server's own options
    "port": Range(0, 65535, True, note="0 = any free port"),
    "max_body_bytes": Range(1, 1 << 31, True),
    "max_tokens_cap": Range(1, 1 << 20, True),
    "stream_interval_ms": Range(0, 60_000, False),
}


def check(name: str, value: object, *, label: str | None = None) -> None:
    """Raise OptionError unless `value` is in the range of option `name` (`label` is how the caller spells it)."""
    allowed = RANGES[name]
    if not allowed.contains(value):
        shown = label or name
        fix = allowed.fix or f"give {shown} a value in that range"
        raise OptionError(f"{shown} must be {allowed.describe()}, not {value!r}", fix=fix)


def check_optional(name: str, value: object, *, label: str | None = None) -> None:
    if value is not None:
        check(name, value, label=label)
