"""The Hugging Face hub, shared by the converter (checkpoints) and the runtime (`pull` of GGUF files).

Repo ids and `REPO:QUANT` references, quantization names in GGUF file names, huggingface_hub's errors as one
clear message each, and a progress adapter so that the hub's downloads report to a replaceable `Progress`.
huggingface_hub is imported only where it is used.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .errors import SynatraError
from .progress import Progress

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_QUANT = "Q4_K_M"  # what `pull REPO` takes when the repo has it, as ollama and llama-server do
_HOST_PREFIXES = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/")
_REF = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<revision>[\w.-]+))?"
    r"(?::(?P<quant>[\w.-]+)|/(?P<filename>[^:@]+\.gguf))?$"
)
# A quantization name at the end of a file stem: `synatra-7b-v0.3-dpo.Q4_K_M`, `model-q8_0`, `x.IQ3_XXS`, `x-f16`.
_QUANT = re.compile(r"(?:^|[._-])((?:UD-)?I?Q[1-8](?:_[A-Z0-9]+)*|BF16|F16|F32)$", re.IGNORECASE)
_SPLIT = re.compile(r"-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class HubRef:
    """One GGUF of a hub repo: `owner/name[@revision][:QUANT]` or `owner/name[@revision]/FILE.gguf`."""

    repo_id: str
    revision: str | None = None
    quant: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        text = self.repo_id + (f"@{self.revision}" if self.revision else "")
        if self.filename:
            return f"{text}/{self.filename}"
        return f"{text}:{self.quant}" if self.quant else text


def parse_hub_ref(text: str, revision: str | None = None) -> HubRef | None:
    """The reference `text` spells (an `hf.co/` prefix allowed), or None when it is no hub reference."""
    for prefix in _HOST_PREFIXES:
        text = text.removeprefix(prefix)
    match = _REF.match(text)
    if match is None or match["repo"].lower().endswith(".gguf"):  # a missing local file, not a repo
        return None
    quant = match["quant"]
    return HubRef(match["repo"], revision or match["revision"], quant.upper() if quant else None, match["filename"])


def quant_of(filename: str) -> str | None:
    """The quantization a GGUF's file name gives (`Q4_K_M`), upper-case; None for projectors and untagged names."""
    name = PurePosixPath(filename).name
    if not name.lower().endswith(".gguf") or name.lower().startswith("mmproj"):
        return None
    match = _QUANT.search(_SPLIT.sub("", name[: -len(".gguf")]))
    return match.group(1).upper() if match else None


def is_split(filename: str) -> bool:
    """A part of a GGUF split into several files (`…-00001-of-00003.gguf`)."""
    return bool(_SPLIT.search(PurePosixPath(filename).name[: -len(".gguf")]))


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, *, offline_fix: str) -> Iterator[None]:
    """huggingface_hub's failures, each as one SynatraError that says what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except SynatraError:
        raise
    except GatedRepoError as exc:
        raise SynatraError(f"{repo_id} is gated", fix="accept its terms on the hub and run `hf auth login`") from exc
    except RepositoryNotFoundError as exc:
        raise SynatraError(f"{repo_id} was not found on the hub", fix="check the repo id") from exc
    except RevisionNotFoundError as exc:
        raise SynatraError(f"{repo_id} has no revision {revision}", fix="check the revision") from exc
    except LocalEntryNotFoundError as exc:
        raise SynatraError(
            f"{repo_id} is not in the local hub cache and downloads are off (HF_HUB_OFFLINE)", fix=offline_fix
        ) from exc
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # the network boundary: a refused connection, a timeout, an HTTP error, ...
        raise SynatraError(
            f"could not download {repo_id}: {type(exc).__name__}: {exc}", fix="check the network and try again"
        ) from exc


def progress_bar_class(progress: Progress, action: str = "downloading") -> type[Any]:
    """A tqdm class for huggingface_hub's `tqdm_class=` that draws nothing itself and reports to `progress`."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class ReportingBar(hub_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            progress.start(f"{action} {kwargs.get('desc') or ''}".strip(), kwargs.get("total"))
            if kwargs.get("initial"):
                progress.advance(int(kwargs["initial"]))

        def update(self, n: float | None = 1) -> bool | None:
            progress.advance(int(n or 0))
            return super().update(n)

        def close(self) -> None:
            if not getattr(self, "_reported_close", False):
                self._reported_close = True
                progress.finish()
            super().close()

    return ReportingBar
