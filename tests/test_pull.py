"""`pull` up to the network boundary, with huggingface_hub's own code throughout.

- References and quantization names are parsed as llama-server and ollama spell them.
- Offline (HF_HUB_OFFLINE=1): a hub cache laid out as huggingface_hub lays it (blobs/, snapshots/<commit>/,
  refs/main) is listed and pulled from; a wrong quant lists the quants there are; a blob whose bytes do not
  match its digest is refused and removed; `run REPO:QUANT` pulls first.
- Online, against a fake hub on 127.0.0.1 (HF_ENDPOINT): the file listing with LFS sha256, a download whose
  connection drops halfway and resumes (a Range request), a sha256 mismatch that leaves nothing, and a pull
  interrupted by Ctrl-C that leaves nothing half-written in the models folder.

huggingface_hub reads HF_HUB_OFFLINE, HF_HUB_CACHE and HF_ENDPOINT when it is imported, so every pull runs in
a fresh `synatra-local` process with its own environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from synatra_local.core.errors import SynatraError
from synatra_local.core.hub import HubRef, parse_hub_ref, quant_of
from synatra_local.runtime.pull import RepoGGUF, RepoListing, choose_file

CLI = str(Path(sys.executable).with_name("synatra-local"))
REPO = "TheBloke/Synatra-7B-v0.3-dpo-GGUF"
COMMIT = "8c1f2e4d6b0a9c7e5f3d1b2a4c6e8f0a1b3c5d7e"
FILE = "synatra-7b-v0.3-dpo.Q8_0.gguf"
OTHERS = ("synatra-7b-v0.3-dpo.Q2_K.gguf", "synatra-7b-v0.3-dpo.Q5_K_S.gguf")
CLOSED_PORT = "http://127.0.0.1:9"


# --- references and quantization names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TheBloke/Synatra-7B-v0.3-dpo-GGUF:Q4_K_M", HubRef(REPO, None, "Q4_K_M")),
        ("TheBloke/Synatra-7B-v0.3-dpo-GGUF:q4_k_m", HubRef(REPO, None, "Q4_K_M")),
        ("TheBloke/Synatra-7B-v0.3-dpo-GGUF", HubRef(REPO)),
        ("hf.co/TheBloke/Synatra-7B-v0.3-dpo-GGUF:Q8_0", HubRef(REPO, None, "Q8_0")),
        ("TheBloke/Synatra-7B-v0.3-dpo-GGUF@main:Q8_0", HubRef(REPO, "main", "Q8_0")),
        (f"TheBloke/Synatra-7B-v0.3-dpo-GGUF@{COMMIT[:7]}/{FILE}", HubRef(REPO, COMMIT[:7], None, FILE)),
        (f"TheBloke/Synatra-7B-v0.3-dpo-GGUF/{FILE}", HubRef(REPO, None, None, FILE)),
        ("owner/repo/sub/dir/x.gguf", HubRef("owner/repo", None, None, "sub/dir/x.gguf")),
        ("synatra-7b-v0.1-Q4_K_M", None),
        ("models/missing.gguf", None),
        ("./models/x", None),
        ("a/b:c:d", None),
        ("", None),
    ],
)
def test_hub_references(text: str, expected: HubRef | None) -> None:
    assert parse_hub_ref(text) == expected


def test_revision_option_wins() -> None:
    assert parse_hub_ref(f"{REPO}@main:Q8_0", revision="v2") == HubRef(REPO, "v2", "Q8_0")


@pytest.mark.parametrize(
    ("filename", "quant"),
    [
        ("synatra-7b-v0.3-dpo.Q4_K_M.gguf", "Q4_K_M"),
        ("Synatra-7B-v0.3-dpo-Q5_K_S.gguf", "Q5_K_S"),
        ("model-q8_0.gguf", "Q8_0"),
        ("x.IQ3_XXS.gguf", "IQ3_XXS"),
        ("x-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("sub/model.f16.gguf", "F16"),
        ("model-BF16.gguf", "BF16"),
        ("model-Q4_K_M-00001-of-00003.gguf", "Q4_K_M"),
        ("mmproj-model-f16.gguf", None),
        ("model.gguf", None),
        ("README.md", None),
    ],
)
def test_quantization_in_file_names(filename: str, quant: str | None) -> None:
    assert quant_of(filename) == quant


def listing(*names: str, from_cache: bool = False) -> RepoListing:
    return RepoListing(REPO, COMMIT, [RepoGGUF(n, 1, None) for n in names], from_cache)


def test_choosing_a_file() -> None:
    files = listing(FILE, *OTHERS, "synatra-7b-v0.3-dpo.Q4_K_M.gguf")
    assert choose_file(HubRef(REPO, quant="Q8_0"), files).filename == FILE
    assert choose_file(HubRef(REPO), files).filename == "synatra-7b-v0.3-dpo.Q4_K_M.gguf", "Q4_K_M by default"
    assert choose_file(HubRef(REPO), listing("only.gguf")).filename == "only.gguf", "a repo's one GGUF"
    assert choose_file(HubRef(REPO, filename=OTHERS[0]), files).filename == OTHERS[0]


def test_a_wrong_quant_lists_the_repos_quants_in_order() -> None:
    with pytest.raises(SynatraError) as info:
        choose_file(HubRef(REPO, quant="Q6_K"), listing(FILE, *OTHERS, "x.F16.gguf", "x.Q4_0.gguf"))
    assert "has no Q6_K GGUF" in info.value.message
    assert info.value.fix == f"choose one of: {REPO}:Q2_K, {REPO}:Q4_0, {REPO}:Q5_K_S, {REPO}:Q8_0, {REPO}:F16"
    with pytest.raises(SynatraError, match="the default when no QUANT is given"):
        choose_file(HubRef(REPO), listing(FILE, *OTHERS))
    with pytest.raises(SynatraError, match=r"in the hub cache \(downloads are off"):
        choose_file(HubRef(REPO, quant="Q6_K"), listing(FILE, from_cache=True))
    with pytest.raises(SynatraError, match="has no file nope.gguf"):
        choose_file(HubRef(REPO, filename="nope.gguf"), listing(FILE))
    with pytest.raises(SynatraError, match="no GGUF files"):
        choose_file(HubRef(REPO), listing())


def test_split_files_are_refused_clearly() -> None:
    parts = listing("m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf")
    with pytest.raises(SynatraError, match="one part of a split GGUF"):
        choose_file(HubRef(REPO, quant="Q4_K_M"), parts)


# --- a hub cache, offline ------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lay_out_cache(cache: Path, files: dict[str, bytes | Path], *, commit: str = COMMIT, repo: str = REPO) -> Path:
    """A repo in a hub cache as huggingface_hub writes it: content-addressed blobs, relative snapshot links."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return storage


@dataclass
class Workspace:
    root: Path
    cache: Path
    models: Path
    env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], capture_output=True, text=True, encoding="utf-8", timeout=300,
                              env={**self.env, **extra}, cwd=self.root)


def workspace(tmp_path: Path, *, offline: bool, endpoint: str = CLOSED_PORT) -> Workspace:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    space = Workspace(tmp_path, tmp_path / "hub", tmp_path / "models")
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(space.cache), HF_ENDPOINT=endpoint,
               SYNATRA_LOCAL_MODELS=str(space.models), HF_HUB_DISABLE_TELEMETRY="1", PYTHONIOENCODING="utf-8")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    space.env = env
    return space


def nothing_in(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def test_offline_pull_links_the_cached_blob_and_remembers_the_origin(tmp_path: Path, tiny_gguf_v03: Path) -> None:
    space = workspace(tmp_path, offline=True)
    storage = lay_out_cache(space.cache, {FILE: tiny_gguf_v03, OTHERS[0]: b"GGUF not really"})
    result = space.cli("pull", f"{REPO}:Q8_0", "--quiet")
    assert result.returncode == 0, result.stderr
    model = space.models / FILE
    assert result.stdout == f"{model}\n", "prints the resulting path, and only that"
    blob = storage / "blobs" / sha256_of(tiny_gguf_v03)
    assert model.stat().st_ino == blob.stat().st_ino and blob.stat().st_nlink == 2, "a hard link: no second copy"
    origin = json.loads((space.models / f"{FILE}.origin.json").read_text(encoding="utf-8"))
    assert origin == {"repo_id": REPO, "revision": COMMIT, "filename": FILE, "sha256": sha256_of(tiny_gguf_v03),
                      "size": tiny_gguf_v03.stat().st_size, "link": "hardlink"}
    assert sorted(p.name for p in space.models.iterdir()) == [FILE, f"{FILE}.origin.json"]

    again = space.cli("pull", f"{REPO}:Q8_0", "--quiet")
    assert again.returncode == 0 and again.stdout == result.stdout, "pulling again is a no-op"

    listed = space.cli("list")
    assert listed.returncode == 0, listed.stderr
    assert f"{REPO}@{COMMIT[:12]}/{FILE}" in listed.stdout
    inspected = space.cli("inspect", f"{REPO}:Q8_0", "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["pulled_from"]["repo_id"] == REPO, "a pulled model is found by reference"

    removed = space.cli("rm", FILE.removesuffix(".gguf"))
    assert removed.returncode == 0, removed.stderr
    assert nothing_in(space.models), "rm removes the link and its origin record"
    assert blob.is_file() and blob.stat().st_nlink == 1, "the hub cache keeps its blob"


def test_offline_wrong_quant_lists_the_cached_quants(tmp_path: Path) -> None:
    space = workspace(tmp_path, offline=True)
    lay_out_cache(space.cache, {FILE: b"GGUF a", OTHERS[0]: b"GGUF b", "README.md": b"# card"})
    result = space.cli("pull", f"{REPO}:Q6_K")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "has no Q6_K GGUF in the hub cache" in result.stderr
    assert f"{REPO}:Q2_K, {REPO}:Q8_0" in result.stderr
    assert nothing_in(space.models)


def test_offline_repo_not_in_the_cache(tmp_path: Path) -> None:
    space = workspace(tmp_path, offline=True)
    result = space.cli("pull", "someone/Other-GGUF:Q4_K_M")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not in the local hub cache and downloads are off (HF_HUB_OFFLINE)" in result.stderr
    assert nothing_in(space.models)
    ran = space.cli("run", "someone/Other-GGUF:Q4_K_M", "안녕")
    assert ran.returncode == 1 and "Traceback" not in ran.stderr and ran.stdout == ""
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no model 'someone/Other-GGUF:Q4_K_M'" in errors[0]
    assert "pulling it failed" in errors[0] and "HF_HUB_OFFLINE" in errors[0]


def test_offline_corrupt_blob_is_refused_and_removed(tmp_path: Path) -> None:
    space = workspace(tmp_path, offline=True)
    storage = lay_out_cache(space.cache, {FILE: b"GGUF original bytes"})
    (blob,) = (storage / "blobs").iterdir()
    blob.write_bytes(b"GGUF damaged bytes!")
    result = space.cli("pull", f"{REPO}:Q8_0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is corrupt" in result.stderr and blob.name in result.stderr
    assert not blob.exists() and not (storage / "snapshots" / COMMIT / FILE).is_symlink()
    assert nothing_in(space.models)


def test_run_pulls_a_hub_reference_first(tmp_path: Path, tiny_gguf_v03: Path) -> None:
    space = workspace(tmp_path, offline=True)
    lay_out_cache(space.cache, {FILE: tiny_gguf_v03})
    result = space.cli("run", f"hf.co/{REPO}:Q8_0", "안녕", "-n", "4", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "a reply"
    assert "pulling it" in result.stderr
    assert (space.models / FILE).is_file()
    again = space.cli("run", f"{REPO}:Q8_0", "안녕", "-n", "4", "--seed", "1")
    assert again.returncode == 0 and "pulling" not in again.stderr and again.stdout == result.stdout


# --- a fake hub on loopback, online --------------------------------------------------------------------


@dataclass
class FakeHub:
    """Serves one repo as the hub's API and `resolve/` endpoints do, with faults on request."""

    files: dict[str, bytes]
    advertised: dict[str, str] = field(default_factory=dict)  # filename -> sha256 the API announces
    drop_first_get_at: int | None = None  # close the first download's connection after this many bytes
    stall_at: int | None = None  # send this many bytes, then hold the connection until `release`
    serve_instead: bytes | None = None  # bytes served in place of the file's (same length)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def model_info(self) -> dict[str, object]:
        siblings: list[dict[str, object]] = [{"rfilename": ".gitattributes", "size": 1519, "blobId": "0" * 40}]
        for name, data in self.files.items():
            sha = self.advertised.get(name, hashlib.sha256(data).hexdigest())
            siblings.append({"rfilename": name, "size": len(data), "blobId": "1" * 40,
                             "lfs": {"sha256": sha, "size": len(data), "pointerSize": 135}})
        return {"id": REPO, "modelId": REPO, "sha": COMMIT, "siblings": siblings, "private": False, "tags": []}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    resolve = re.compile(rf"^/{re.escape(REPO)}/resolve/([^/]+)/(.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self.requests_append()
            path = self.path.split("?")[0]
            if path in (f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main",
                        f"/api/models/{REPO}/revision/{COMMIT}"):
                body = json.dumps(hub.model_info()).encode()
                self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body)
                return
            match = resolve.match(path)
            if not match or match.group(2) not in hub.files:
                self._send(404, {"Content-Length": "0", "X-Error-Code": "EntryNotFound"})
                return
            self._file(match.group(2), head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self.requests_append()
            match = resolve.match(self.path.split("?")[0])
            if not match or match.group(2) not in hub.files:
                self._send(404, {"Content-Length": "0", "X-Error-Code": "EntryNotFound"})
                return
            self._file(match.group(2), head=True)

        def requests_append(self) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))

        def _file(self, name: str, *, head: bool) -> None:
            data = hub.files[name]
            served = hub.serve_instead if hub.serve_instead is not None else data
            sha = hashlib.sha256(data).hexdigest()
            headers = {"X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha}"', "ETag": f'"{sha}"',
                       "X-Linked-Size": str(len(data)), "Accept-Ranges": "bytes"}
            start = 0
            wanted = self.headers.get("Range")
            if wanted and not head:
                start = int(re.match(r"bytes=(\d+)-", wanted).group(1))  # type: ignore[union-attr]
            body = served[start:]
            headers["Content-Length"] = str(len(data) if head else len(body))
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._send(206 if start else 200, headers)
            if head:
                return
            downloads = sum(1 for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path)
            if hub.drop_first_get_at is not None and downloads == 1:
                self.wfile.write(body[: hub.drop_first_get_at])
                self.wfile.flush()
                self.close_connection = True
                return
            if hub.stall_at is not None:
                self.wfile.write(body[: hub.stall_at])
                self.wfile.flush()
                hub.stalled.set()
                hub.release.wait(60)
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture()
def fake_hub(tiny_gguf_v03: Path) -> Iterator[FakeHub]:
    hub = FakeHub({FILE: tiny_gguf_v03.read_bytes(), OTHERS[0]: b"GGUF other"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hub
    hub.release.set()
    server.shutdown()
    server.server_close()


def test_online_pull_lists_verifies_and_resumes_a_dropped_download(tmp_path: Path, fake_hub: FakeHub) -> None:
    size = len(fake_hub.files[FILE])
    fake_hub.drop_first_get_at = size - 1000  # huggingface_hub writes 10 MiB chunks: the first one is kept
    space = workspace(tmp_path, offline=False, endpoint=fake_hub.url)
    result = space.cli("pull", f"{REPO}:Q8_0")
    assert result.returncode == 0, result.stderr
    model = space.models / FILE
    assert result.stdout == f"{model}\n" and model.read_bytes() == fake_hub.files[FILE]
    gets = [rng for method, path, rng in fake_hub.requests if method == "GET" and "/resolve/" in path]
    assert len(gets) == 2 and gets[0] is None and gets[1] is not None, gets
    resumed_at = int(gets[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= size - 1000, "the dropped download resumed from what it had, not from the start"
    assert any(path.startswith(f"/api/models/{REPO}") and "blobs=" in path for _, path, _ in fake_hub.requests)
    origin = json.loads((space.models / f"{FILE}.origin.json").read_text(encoding="utf-8"))
    assert origin["revision"] == COMMIT and origin["sha256"] == hashlib.sha256(fake_hub.files[FILE]).hexdigest()

    wrong = space.cli("pull", f"{REPO}:Q4_K_M")
    assert wrong.returncode == 1 and f"{REPO}:Q2_K, {REPO}:Q8_0" in wrong.stderr
    assert "hub cache" not in wrong.stderr, "listed from the hub, not the cache"

    offline = space.cli("pull", f"{REPO}:Q8_0", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0 and offline.stdout == result.stdout, "the cache knows the branch's commit"
    cached_wrong = space.cli("pull", f"{REPO}:Q2_K", HF_HUB_OFFLINE="1")
    assert cached_wrong.returncode == 1 and f"choose one of: {REPO}:Q8_0" in cached_wrong.stderr


def test_online_sha256_mismatch_is_detected_and_leaves_nothing(tmp_path: Path, fake_hub: FakeHub) -> None:
    real = fake_hub.files[FILE]
    fake_hub.serve_instead = real[:-1] + bytes([real[-1] ^ 0xFF])
    space = workspace(tmp_path, offline=False, endpoint=fake_hub.url)
    result = space.cli("pull", f"{REPO}:Q8_0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is corrupt" in result.stderr and hashlib.sha256(real).hexdigest() in result.stderr
    assert nothing_in(space.models)
    blobs = space.cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert nothing_in(blobs), "the corrupt blob is not kept in the hub cache either"


def test_interrupted_pull_leaves_nothing_in_the_models_folder(tmp_path: Path, fake_hub: FakeHub) -> None:
    fake_hub.stall_at = len(fake_hub.files[FILE]) // 2
    space = workspace(tmp_path, offline=False, endpoint=fake_hub.url)
    space.models.mkdir()
    (space.models / "mine.gguf").write_bytes(b"GGUF")
    proc = subprocess.Popen([CLI, "pull", f"{REPO}:Q8_0"], env=space.env, cwd=space.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert fake_hub.stalled.wait(120), "the download started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        fake_hub.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert out == "" and "Traceback" not in err
    assert [p.name for p in space.models.iterdir()] == ["mine.gguf"], "no partial file, hidden or not"


def test_a_users_file_of_the_same_name_is_kept(tmp_path: Path, fake_hub: FakeHub) -> None:
    space = workspace(tmp_path, offline=False, endpoint=fake_hub.url)
    space.models.mkdir()
    (space.models / FILE).write_bytes(b"GGUF mine")
    refused = space.cli("pull", f"{REPO}:Q8_0")
    assert refused.returncode == 1 and "already exists (not pulled from the hub)" in refused.stderr
    assert (space.models / FILE).read_bytes() == b"GGUF mine"
    forced = space.cli("pull", f"{REPO}:Q8_0", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (space.models / FILE).read_bytes() == fake_hub.files[FILE]


# --- how the models folder holds the bytes, and progress -----------------------------------------------


def test_across_filesystems_the_model_is_a_symlink_to_the_blob(tmp_path: Path, tiny_gguf_v03: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) to make a hard link impossible")
    space = workspace(tmp_path, offline=True)
    storage = lay_out_cache(space.cache, {FILE: tiny_gguf_v03})
    models = Path(tempfile.mkdtemp(dir=shm, prefix="synatra-pull-"))
    try:
        result = space.cli("pull", f"{REPO}:Q8_0", "--quiet", SYNATRA_LOCAL_MODELS=str(models))
        assert result.returncode == 0, result.stderr
        model = models / FILE
        blob = storage / "blobs" / sha256_of(tiny_gguf_v03)
        assert model.is_symlink() and model.resolve() == blob.resolve()
        assert json.loads((models / f"{FILE}.origin.json").read_text(encoding="utf-8"))["link"] == "symlink"
        removed = space.cli("rm", FILE, SYNATRA_LOCAL_MODELS=str(models))
        assert removed.returncode == 0, removed.stderr
        assert not any(models.iterdir()) and blob.is_file(), "rm removes the link, never the cache's blob"
    finally:
        shutil.rmtree(models, ignore_errors=True)


class Recorder:
    def __init__(self, interrupt_after: int | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.interrupt_after = interrupt_after

    def start(self, description: str, total: int | None) -> None:
        self.calls.append(("start", (description, total)))

    def advance(self, amount: int) -> None:
        self.calls.append(("advance", amount))
        if self.interrupt_after is not None and len(self.calls) > self.interrupt_after:
            raise KeyboardInterrupt

    def finish(self) -> None:
        self.calls.append(("finish", None))


def test_where_no_link_can_be_made_the_model_is_copied_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synatra_local.runtime import pull as pull_module
    from synatra_local.runtime.store import Origin

    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 * (8 << 20) + 5))
    folder = tmp_path / "models"
    folder.mkdir()

    def refuse(*args: object) -> None:
        raise OSError("links not supported here")

    monkeypatch.setattr(pull_module.os, "link", refuse)
    monkeypatch.setattr(pull_module.os, "symlink", refuse)
    origin = Origin(REPO, COMMIT, FILE, None, blob.stat().st_size, link="")
    with pytest.raises(KeyboardInterrupt):
        pull_module._place(blob, folder / FILE, origin, Recorder(interrupt_after=2))
    assert not any(folder.iterdir()), "an interrupted copy leaves nothing, hidden or not"
    target = pull_module._place(blob, folder / FILE, origin, Recorder())
    assert target.read_bytes() == blob.read_bytes() and not target.is_symlink()
    assert target.stat().st_ino != blob.stat().st_ino
    assert json.loads((folder / f"{FILE}.origin.json").read_text(encoding="utf-8"))["link"] == "copy"


def test_huggingface_hub_progress_reaches_a_replaceable_progress() -> None:
    from synatra_local.core.hub import progress_bar_class

    recorder = Recorder()
    bar_class = progress_bar_class(recorder)
    # as huggingface_hub's http_get creates and drives its bar (tqdm_class=...)
    with bar_class(unit="B", unit_scale=True, total=100, initial=10, desc=FILE, name="huggingface_hub.http_get") as bar:
        bar.update(40)
        bar.update(50)
    assert recorder.calls == [("start", (f"downloading {FILE}", 100)), ("advance", 10), ("advance", 40),
                              ("advance", 50), ("finish", None)]
