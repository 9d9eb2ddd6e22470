"""Korean text shipped with the package: an evaluation excerpt (for `eval`) and a calibration excerpt (for
`imatrix`), two disjoint parts of the Constitution of the Republic of Korea (statutes are not protected works).

Calibration: the preamble and chapters 1–3; evaluation: chapters 4–10 and the addenda. Held apart so that a
matrix made from one is never judged on the same words.
"""

from __future__ import annotations

from importlib import resources

EVAL_FILE = "ko_eval.txt"
CALIBRATION_FILE = "ko_calibration.txt"


def _read(name: str) -> str:
    return resources.files("synatra_local").joinpath("data", name).read_text(encoding="utf-8")


def eval_text() -> str:
    """The default text of `eval`."""
    return _read(EVAL_FILE)


def calibration_text() -> str:
    """The default text of `imatrix` and `quantize --imatrix auto`."""
    return _read(CALIBRATION_FILE)
