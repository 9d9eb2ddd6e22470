"""`pull`: one GGUF of a Hugging Face repo into the models folder, through huggingface_hub's cache.

The bytes live once, in the hub cache (`blobs/`): the models folder gets a hard link to the blob where the
filesystem allows, a symbolic link where it does not, and a copy only as a last resort. Nothing appears in the
models folder before the download is complete and its digest matches the hub's (the LFS sha256); an origin
record beside it remembers the repo and commit, for `list`. With HF_HUB_OFFLINE=1 the repo's files are listed
from the cache, and only what the cache holds can be pulled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from synatra_local.core.atomic import atomic_output
from synatra_local.core.errors import SynatraError
from synatra_local.core.hub import (
    DEFAULT_QUANT,
    HubRef,
    hub_errors,
    is_offline,
    is_split,
    parse_hub_ref,
    progress_bar_class,
    quant_of,
)
from synatra_local.core.progress import Progress, SilentProgress

from .store import Origin, models_dir, pulled_from, record_origin

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_OID = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class RepoGGUF:
    """A GGUF file of a repo, with the digest the hub gives for it (LFS sha256, or the git blob id)."""

    filename: str
    size: int | None
    digest: str | None


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    commit: str
    files: list[RepoGGUF]
    from_cache: bool


def parse_ref(text: str, revision: str | None = None) -> HubRef:
    ref = parse_hub_ref(text, revision)
    if ref is None:
        raise SynatraError(
            f"{text!r} is not a hub reference",
            fix="use owner/repo, owner/repo:QUANT or owner/repo/FILE.gguf (optionally owner/repo@REVISION:QUANT)",
        )
    return ref


def pull(
    ref: str | HubRef,
    *,
    folder: Path | None = None,
    revision: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Download (or take from the hub cache) one GGUF and make it available by name in the models folder.

    Returns the model's path in the models folder. A model already pulled from the same commit is returned at
    once; one pulled from an older commit is replaced; any other file of that name needs `force`.
    """
    from huggingface_hub import hf_hub_download

    hub_ref = ref if isinstance(ref, HubRef) else parse_ref(ref, revision)
    folder = Path(folder or models_dir())
    progress = progress or SilentProgress()
    offline = is_offline()
    with hub_errors(hub_ref.repo_id, hub_ref.revision, offline_fix="pull it once while online"):
        listing = list_cached_ggufs(hub_ref) if offline else list_repo_ggufs(hub_ref)
        chosen = choose_file(hub_ref, listing)
        target = folder / PurePosixPath(chosen.filename).name
        if _is_current(target, listing, chosen):
            return target
        _check_replaceable(target, listing.repo_id, force)
        # By the revision asked for (the default branch when none), so the cache records the branch's commit
        # in refs/ and an offline pull finds it later.
        pointer = Path(
            hf_hub_download(
                listing.repo_id,
                chosen.filename,
                revision=hub_ref.revision,
                local_files_only=offline,
                tqdm_class=progress_bar_class(progress),
            )
        )
    commit = pointer.parents[len(PurePosixPath(chosen.filename).parts) - 1].name  # snapshots/<commit>/<file>
    blob = pointer.resolve()
    digest = chosen.digest or (blob.name if _SHA256.match(blob.name) or _GIT_OID.match(blob.name) else None)
    sha256 = _verify(blob, pointer, digest, listing.repo_id, chosen.filename, progress)
    folder.mkdir(parents=True, exist_ok=True)
    origin = Origin(listing.repo_id, commit, chosen.filename, sha256, blob.stat().st_size, link="")
    return _place(blob, target, origin, progress)


def list_repo_ggufs(ref: HubRef) -> RepoListing:
    """The repo's GGUF files at the revision, with the hub's sizes and digests (one API call)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
    files = [
        RepoGGUF(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else s.blob_id)
        for s in info.siblings or []
        if s.rfilename.lower().endswith(".gguf")
    ]
    return RepoListing(info.id or ref.repo_id, str(info.sha), files, from_cache=False)


def list_cached_ggufs(ref: HubRef) -> RepoListing:
    """The GGUF files the hub cache holds for the repo at the revision (resolved through the cache's refs/)."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(ref.repo_id, revision=ref.revision, local_files_only=True))
    files = []
    for path in sorted(snapshot.rglob("*.gguf")):
        if path.is_file():
            blob = path.resolve()
            files.append(RepoGGUF(path.relative_to(snapshot).as_posix(), blob.stat().st_size, None))
    return RepoListing(ref.repo_id, snapshot.name, files, from_cache=True)


def choose_file(ref: HubRef, listing: RepoListing) -> RepoGGUF:
    """The file `ref` names, or the one of its quantization (Q4_K_M when none is given); else a clear error."""
    where = " in the hub cache (downloads are off: HF_HUB_OFFLINE)" if listing.from_cache else ""
    ggufs = listing.files
    if not ggufs:
        raise SynatraError(
            f"{listing.repo_id} has no GGUF files{where}",
            fix=f"convert its checkpoint instead: synatra-local quantize {listing.repo_id}",
        )
    if ref.filename:
        named = [f for f in ggufs if f.filename == ref.filename]
        if not named:
            raise SynatraError(
                f"{listing.repo_id} has no file {ref.filename}{where}",
                fix="choose one of: " + ", ".join(f.filename for f in ggufs),
            )
        return _not_split(named[0])
    wanted = ref.quant or DEFAULT_QUANT
    candidates = [f for f in ggufs if quant_of(f.filename) == wanted]
    if not candidates and ref.quant is None and len(ggufs) == 1:
        candidates = ggufs
    if not candidates:
        quants = sorted({q for f in ggufs if (q := quant_of(f.filename))}, key=_quant_order)
        choices = [f"{listing.repo_id}:{q}" for q in quants] or [f"{listing.repo_id}/{f.filename}" for f in ggufs]
        asked = f"no {wanted} GGUF" if ref.quant else f"no {wanted} GGUF (the default when no QUANT is given)"
        raise SynatraError(f"{listing.repo_id} has {asked}{where}", fix="choose one of: " + ", ".join(choices))
    whole = [f for f in candidates if not is_split(f.filename)]
    if len(whole) > 1:
        raise SynatraError(
            f"{listing.repo_id} has {len(whole)} {wanted} GGUF files",
            fix="name one: " + ", ".join(f"{listing.repo_id}/{f.filename}" for f in whole),
        )
    return whole[0] if whole else _not_split(candidates[0])


def _not_split(file: RepoGGUF) -> RepoGGUF:
    if is_split(file.filename):
        raise SynatraError(
            f"{file.filename} is one part of a split GGUF, which pull does not assemble yet",
            fix="choose a quantization that is one file",
        )
    return file


def _quant_order(quant: str) -> tuple[int, str]:
    bits = re.search(r"\d+", quant)
    return (int(bits.group()) if bits and not quant.startswith(("F", "BF")) else 99, quant)


def _is_current(target: Path, listing: RepoListing, chosen: RepoGGUF) -> bool:
    origin = pulled_from(target)
    return (
        origin is not None
        and target.is_file()
        and origin.repo_id == listing.repo_id
        and origin.filename == chosen.filename
        and origin.revision == listing.commit
        and target.stat().st_size == origin.size
    )


def _check_replaceable(target: Path, repo_id: str, force: bool) -> None:
    """A file of that name that was not pulled from this repo is the user's: kept unless `force`."""
    if force or not (target.exists() or target.is_symlink()):
        return
    origin = pulled_from(target)
    if origin is None or origin.repo_id != repo_id:
        mine = f"pulled from {origin.repo_id}" if origin else "not pulled from the hub"
        raise SynatraError(
            f"{target} already exists ({mine})",
            fix=f"pass --force to replace it, or remove it first: synatra-local rm {target.stem}",
        )


def _verify(blob: Path, pointer: Path, digest: str | None, repo_id: str, filename: str, progress: Progress) -> str:
    """Hash the downloaded blob and compare it with the hub's digest; a mismatch removes it from the cache."""
    size = blob.stat().st_size
    sha256 = hashlib.sha256()
    git_oid = hashlib.sha1(f"blob {size}\0".encode()) if digest and _GIT_OID.match(digest) else None
    progress.start(f"verifying {PurePosixPath(filename).name}", size)
    try:
        with blob.open("rb") as f:
            while chunk := f.read(_CHUNK):
                sha256.update(chunk)
                if git_oid is not None:
                    git_oid.update(chunk)
                progress.advance(len(chunk))
    finally:
        progress.finish()
    got = (git_oid or sha256).hexdigest()
    if digest is not None and got != digest:
        for path in (pointer, blob):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise SynatraError(
            f"{filename} from {repo_id} is corrupt: its digest is {got}, the hub says {digest}; "
            "it was removed from the hub cache",
            fix="pull it again; if that fails the same way, the file on the hub is broken",
        )
    return sha256.hexdigest()


def _place(blob: Path, target: Path, origin: Origin, progress: Progress) -> Path:
    """Make `target` the blob's bytes: a hard link, else a symbolic link, else a copy; all or nothing."""
    with atomic_output(target, force=True) as partial:
        try:
            os.link(blob, partial)
            link = "hardlink"
        except OSError:
            try:
                os.symlink(blob, partial)
                link = "symlink"
            except OSError:
                _copy(blob, partial, progress)
                link = "copy"
        # The origin first: a model file without its record would look like a file of the user's.
        record_origin(target, replace(origin, link=link))
    return target


def _copy(source: Path, destination: Path, progress: Progress) -> None:
    progress.start(f"copying {source.name}", source.stat().st_size)
    try:
        with source.open("rb") as src, destination.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                progress.advance(len(chunk))
        shutil.copystat(source, destination)
    finally:
        progress.finish()

