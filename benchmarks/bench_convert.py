"""Converter benchmark: copy floor vs `convert` (F16), peak memory, and quantize vs llama.cpp's quantizer.

Builds (or reuses) a Synatra-7B-shaped fp16 PyTorch checkpoint with random weights in 2 shards, then in one run:
  1. the floor: the same bytes copied six ways, each from a cold cache where the kernel allows it: plain
     (copy_file_range in 1 GiB calls, one fsync at the end, as `cp` does); streamed in 64 MiB steps, each step
     handed to the disk at once with sync_file_range and both sides dropped from the page cache a window later, one
     fsync at the end, each step moved by copy_file_range, or by mapping the source range with MAP_POPULATE and one
     pwrite, the next step mapped meanwhile on a second thread or not; and written with O_DIRECT (where the
     filesystem takes it) from aligned staging buffers, 4 writes in flight, the source mapped a step ahead or read
     with O_DIRECT too (the same I/O as `convert` now does, minus the conversion). All run before the first
     convert and after the last step; in between, after every step, those within 1.3× of the fastest at the start.
     The floor is the method with the lowest median;
  2. `synatra-local convert --outtype f16` in a child process, then the same conversion as `quantize` writes its
     intermediate (no fsync; the file is deleted once quantized), each followed by the floors, `--rounds` times
     (this disk's speed drifts by 2× within minutes): wall time and peak anonymous memory; each round's ratio is
     the step over the faster of the floor's copies just before and just after it, and the median of those ratios
     is the figure (for convert, the same against the fastest of every method is printed too);
  3. llama.cpp's own `convert_hf_to_gguf.py` (the pinned binding's source) to F16, when torch and
     transformers are installed, as a second reference;
  4. `quantize` to Q4_K_M and Q8_0 through our code, and Q4_K_M through llama.cpp's quantizer called
     directly (`llama_model_quantize` with the same threads), as the reference.
Targets: convert and the intermediate ≤ 1.10× the floor, peak anonymous memory ≤ 512 MiB, quantize ≈ llama.cpp's
own speed.
Usage: python benchmarks/bench_convert.py [--shape 7b|tiny] [--weights bin|safetensors] [--work DIR] [--threads N]
                                          [--rounds N] [--no-quantize]
Everything it writes under --work/out is removed at the end (the checkpoint is kept for the next run).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.util
import mmap
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import drop_caches, machine, run_measured  # noqa: E402

MIB = 1 << 20
# `quantize` writes its intermediate through the same call, without the closing fsync
INTERMEDIATE = (
    "import sys\n"
    "from synatra_local.convert.checkpoint import open_checkpoint\n"
    "from synatra_local.convert.gguf_export import write_gguf\n"
    "write_gguf(open_checkpoint(sys.argv[1]), sys.argv[2], outtype='f16', durable=False)\n"
)


CONVERT = "convert → F16 GGUF"
INTERMEDIATE_STEP = "quantize intermediate → F16 (no fsync)"
STREAMED = ("copy_file_range", "mmap+pwrite", "mmap+pwrite, read ahead")  # how a streamed floor moves a step


def streamed_floor(files: list[Path], target: Path, how: str, step: int = 64 * MIB, lag: int = 4) -> float:
    """Seconds to copy `files` into one file, each step written back at once and both sides dropped from the page
    cache `lag` steps later (sync_file_range + POSIX_FADV_DONTNEED), plus one fsync; then removed. A step is moved
    by copy_file_range, or by mapping it with MAP_POPULATE and one pwrite, the next step mapped meanwhile on a
    second thread (`read ahead`) or not. Linux only."""
    sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    write, wait_write_wait = 2, 7  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER
    start = time.perf_counter()
    with target.open("wb") as out, ThreadPoolExecutor(1) as reader:
        fd, position, pending = out.fileno(), 0, []
        for path in files:
            with path.open("rb") as src:
                os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                size = path.stat().st_size
                steps = [(offset, min(step, size - offset)) for offset in range(0, size, step)]
                ahead = reader.submit(_map_step, src.fileno(), *steps[0]) if how.endswith("read ahead") else None
                for i, (offset, n) in enumerate(steps):
                    if how == "copy_file_range":
                        moved = os.copy_file_range(src.fileno(), fd, n, offset, position)
                    else:
                        mapping, skip = ahead.result() if ahead else _map_step(src.fileno(), offset, n)
                        if ahead and i + 1 < len(steps):
                            ahead = reader.submit(_map_step, src.fileno(), *steps[i + 1])
                        with mapping, memoryview(mapping) as view:
                            moved = os.pwrite(fd, view[skip : skip + n], position)
                    if moved != n:
                        raise EOFError(path)
                    if sync_file_range(fd, position, n, write):
                        raise OSError(ctypes.get_errno(), "sync_file_range")
                    os.posix_fadvise(src.fileno(), offset, n, os.POSIX_FADV_DONTNEED)
                    pending.append((position, n))
                    if len(pending) > lag:
                        old, count = pending.pop(0)
                        if sync_file_range(fd, old, count, wait_write_wait):
                            raise OSError(ctypes.get_errno(), "sync_file_range")
                        os.posix_fadvise(fd, old, count, os.POSIX_FADV_DONTNEED)
                    position += n
        os.fsync(fd)
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def _pwrite_whole(fd: int, data: np.ndarray, offset: int) -> None:
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(f"short write at {offset}")


def _read_direct(src: int, buffers: list[memoryview], offset: int, count: int, i: int) -> tuple[memoryview, int]:
    """A source step read with O_DIRECT into aligned buffer `i` (of 3, in turn): the aligned range around it is read,
    and where in the buffer the step starts."""
    aligned = offset - offset % 4096
    span = count + offset - aligned
    if os.preadv(src, [buffers[i % len(buffers)][: span + -span % 4096]], aligned) < span:
        raise EOFError(f"fd {src} ended early")
    return buffers[i % len(buffers)], offset - aligned


def _map_step(src: int, offset: int, count: int, _i: int = 0) -> tuple[mmap.mmap, int]:
    """A source step mapped and read in (MAP_POPULATE), and where in the map it starts."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
    return mmap.mmap(src, count + offset - start, flags=flags, prot=mmap.PROT_READ, offset=start), offset - start


def direct_floor(
    files: list[Path], target: Path, how: str, step: int = 64 * MIB, staging: int = 16 * MIB, buffers: int = 8,
    writers: int = 4,
) -> float:
    """Seconds to copy `files` into one file written with O_DIRECT, plus one fsync; then removed. The source is read
    a step ahead on a second thread, either mapped with MAP_POPULATE (and dropped from the page cache once copied)
    or read with O_DIRECT into aligned buffers (`O_DIRECT both sides`); each step is copied into `buffers` aligned
    staging buffers in turn (the output's offsets never share the source's place in a block), and a full buffer is
    written on one of `writers` threads while the next ones fill. The last block is written padded and the file cut
    to its length."""
    block = 4096
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    stages = [np.frombuffer(mmap.mmap(-1, staging, flags=private), np.uint8) for _ in range(buffers)]
    reads = [memoryview(mmap.mmap(-1, step + block)) for _ in range(3)] if how == "O_DIRECT both sides" else []
    pending: list = [None] * buffers
    current, fill, base = 0, 0, 0
    start = time.perf_counter()
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(writers) as writer:

        def flush(count: int) -> None:
            nonlocal current, fill, base
            pending[current] = writer.submit(_pwrite_whole, out, stages[current][:count], base)
            base, fill, current = base + count, 0, (current + 1) % buffers
            if pending[current] is not None:
                pending[current].result()

        for path in files:
            size = path.stat().st_size
            steps = [(offset, min(step, size - offset)) for offset in range(0, size, step)]
            src = os.open(path, os.O_RDONLY | (os.O_DIRECT if reads else 0))
            if not reads:
                os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            read = functools.partial(_read_direct, src, reads) if reads else functools.partial(_map_step, src)
            ahead = reader.submit(read, *steps[0], 0)
            for i, (offset, n) in enumerate(steps):
                source, skip = ahead.result()
                if i + 1 < len(steps):
                    ahead = reader.submit(read, *steps[i + 1], i + 1)
                view = np.frombuffer(source, np.uint8)  # numpy copies without holding the GIL; memoryview does not
                done = 0
                while done < n:
                    k = min(n - done, staging - fill)
                    stages[current][fill : fill + k] = view[skip + done : skip + done + k]
                    fill, done = fill + k, done + k
                    if fill == staging:
                        flush(fill)
                del view
                if not reads:
                    source.close()
                    os.posix_fadvise(src, offset, n, os.POSIX_FADV_DONTNEED)
            os.close(src)
        end = base + fill
        whole = fill + -fill % block
        stages[current][fill:whole] = 0
        flush(whole)
        for future in pending:
            if future is not None:
                future.result()
    os.ftruncate(out, end)
    os.fsync(out)
    os.close(out)
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


DIRECT = ("mapped source, O_DIRECT out", "O_DIRECT both sides")


PLAIN = "plain copy_file_range + fsync"
CONTENDER = 1.3  # a copy method this much slower than the fastest at the start is timed again only at the end


def floor_set(files: list[Path], out: Path, methods: list[str] | None = None) -> dict[str, float]:
    """Seconds per copy method (all of them unless `methods` names some), each from a cold cache."""
    from synatra_local.convert.staged_output import accepts_direct

    copies: dict[str, Callable[[list[Path], Path], float]] = {PLAIN: copy_floor}
    if sys.platform.startswith("linux"):  # sync_file_range and the rest of the streamed copies
        copies |= {f"streamed {how}": functools.partial(streamed_floor, how=how) for how in STREAMED}
        if accepts_direct(out):
            copies |= {how: functools.partial(direct_floor, how=how) for how in DIRECT}
    times = {}
    for how, copy in copies.items():
        if methods is None or how in methods:
            drop_caches()
            times[how] = copy(files, out / "copy.bin")
    return times


def copy_floor(files: list[Path], target: Path) -> float:
    """Seconds to copy `files` into one file in the kernel (copy_file_range), plus one fsync; then removed."""
    start = time.perf_counter()
    with target.open("wb") as out:
        for path in files:
            with path.open("rb") as src:
                left = path.stat().st_size
                while left:
                    try:
                        n = os.copy_file_range(src.fileno(), out.fileno(), min(left, 1 << 30))
                    except OSError:  # a kernel or filesystem without it: large sequential reads and writes
                        shutil.copyfileobj(src, out, 64 * MIB)
                        out.flush()
                        break
                    if n == 0:
                        break
                    left -= n
        os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def llama_cpp_convert(folder: Path, target: Path) -> tuple[float, int] | str:
    """llama.cpp's `convert_hf_to_gguf.py` to F16 (seconds, peak anon bytes), or why it cannot run here."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {' and '.join(missing)}"
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from llama_cpp_tools import ToolUnavailable, convert_script

    try:
        script = convert_script()
    except ToolUnavailable as exc:
        return f"unavailable: {str(exc).splitlines()[0]}"
    argv = [sys.executable, str(script), str(folder), "--outfile", str(target), "--outtype", "f16"]
    try:
        return run_measured(argv)
    except SystemExit as exc:
        return f"failed: {exc}"
    finally:
        target.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--weights", choices=["bin", "safetensors"], default="bin", help="the checkpoint's format")
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=2, help="converts, each followed by a floor")
    parser.add_argument("--no-quantize", action="store_true", help="measure only the floor and the converters")
    args = parser.parse_args()

    from synatra_local.convert.tiny import MISTRAL_7B, TINY, build_checkpoint

    work = args.work / args.shape
    folder = work / ("Synatra-7B-v0.1-random" + ("" if args.weights == "bin" else "-safetensors"))
    index = "pytorch_model.bin.index.json" if args.weights == "bin" else "model.safetensors.index.json"
    if not (folder / index).is_file():
        print(f"building a {args.shape} fp16 checkpoint with random weights in {folder} …", flush=True)
        start = time.perf_counter()
        build_checkpoint(folder, version="v0.1", weights=args.weights, dtype="F16", shards=2,
                         shape=MISTRAL_7B if args.shape == "7b" else TINY)
        print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    shards = sorted(folder.glob("*.bin" if args.weights == "bin" else "*.safetensors"))
    size = sum(p.stat().st_size for p in shards)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    try:
        report(args, folder, shards, size, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def report(args: argparse.Namespace, folder: Path, shards: list[Path], size: int, out: Path) -> None:
    cold = drop_caches()
    sets = [floor_set(shards, out)]
    fastest = min(sets[0].values())
    contenders = [how for how, seconds in sets[0].items() if seconds <= CONTENDER * fastest]
    cli = [sys.executable, "-m", "synatra_local"]
    f16 = out / "model-F16.gguf"
    convert_argv = cli + ["convert", str(folder), "-o", str(f16), "--outtype", "f16", "--quiet"]
    intermediate = out / "intermediate-F16.gguf"
    intermediate_argv = [sys.executable, "-c", INTERMEDIATE, str(folder), str(intermediate)]
    steps: list[tuple[str, float, int]] = []  # (name, seconds, peak anon), each followed by a floor set
    for _ in range(args.rounds):
        for name, argv, target in ((CONVERT, convert_argv, f16), (INTERMEDIATE_STEP, intermediate_argv, intermediate)):
            target.unlink(missing_ok=True)  # outside the timing, as the floors remove their copies outside theirs
            drop_caches()
            steps.append((name, *run_measured(argv)))
            sets.append(floor_set(shards, out, contenders))
    intermediate.unlink()
    if not args.no_quantize:
        quantize_report(args, cli, f16, out)
    f16.unlink()
    drop_caches()
    llama = llama_cpp_convert(folder, out / "llama-cpp-F16.gguf")
    sets.append(floor_set(shards, out))

    # The floor is one copy method, the fastest (lowest median over the run), timed before and after each step;
    # the faster of the two is the step's floor. Taking the fastest of several methods instead would compare one
    # timing against the minimum of several, which this disk's noise alone makes look faster.
    samples: dict[str, list[float]] = {}
    for times in sets:
        for how, seconds in times.items():
            samples.setdefault(how, []).append(seconds)
    in_every_set = [how for how in samples if len(samples[how]) == len(sets)]
    method = min(in_every_set, key=lambda how: statistics.median(samples[how]))
    floor = min(samples[method])
    convert_peak = max(peak for name, _, peak in steps if name == CONVERT)

    def floor_rows(times: dict[str, float]) -> None:
        for how, seconds in times.items():
            print(f"{'  floor, ' + how:<44}{seconds:>9.1f}{seconds / floor:>9.2f}")

    def step_row(name: str, seconds: float, peak: int) -> None:
        print(f"{name:<44}{seconds:>9.1f}{seconds / floor:>9.2f}{peak / MIB:>15.0f}")

    def per_round(name: str, against: Callable[[dict[str, float]], float]) -> list[float]:
        """Each `name` step's time over the floor just before or after it (sets[i] is before step i)."""
        return [seconds / min(against(sets[i]), against(sets[i + 1]))
                for i, (step, seconds, _) in enumerate(steps) if step == name]

    def ratios(label: str, values: list[float]) -> str:
        return f"{label}: {', '.join(f'{r:.2f}×' for r in values)}; median {statistics.median(values):.2f}×"

    print(f"\nmachine: {machine()}; shape {args.shape}; cache {'cold' if cold else 'warm (cannot drop caches)'}")
    print(f"checkpoint: {len(shards)} {args.weights} shards, {size / 1e9:.2f} GB fp16")
    print(f"{'step (in the order run)':<44}{'seconds':>9}{'ratio':>9}{'peak anon MiB':>15}")
    floor_rows(sets[0])
    for step, after in zip(steps, sets[1:], strict=False):
        step_row(*step)
        floor_rows(after)
    if isinstance(llama, tuple):
        step_row("llama.cpp convert_hf_to_gguf.py → F16", *llama)
        floor_rows(sets[-1])
    else:
        print(f"llama.cpp convert_hf_to_gguf.py: {llama}")
    medians = ", ".join(f"{how} {statistics.median(v):.1f} s" for how, v in samples.items())
    print(f"median per copy method: {medians}; the floor: {method}")

    converts = per_round(CONVERT, lambda times: times[method])
    intermediates = per_round(INTERMEDIATE_STEP, lambda times: times[method])
    print(ratios("convert / the floor before or after it, per round", converts))
    fastest_each = per_round(CONVERT, lambda times: min(times.values()))
    print(ratios("  against the fastest of every copy method before or after", fastest_each))
    convert_median = statistics.median(seconds for name, seconds, _ in steps if name == CONVERT)
    floor_median = statistics.median(samples[method])
    print(f"  median convert / median floor: {convert_median / floor_median:.2f}× "
          f"({convert_median:.1f} s / {floor_median:.1f} s)")
    print(ratios("quantize's intermediate / the floor before or after it, per round", intermediates))
    met = {"convert": statistics.median(converts) <= 1.10, "intermediate": statistics.median(intermediates) <= 1.10,
           "peak": convert_peak <= 512 * MIB}
    print(f"targets: convert ≤ 1.10× the floor (median round): {'met' if met['convert'] else 'NOT met'}; "
          f"the intermediate the same: {'met' if met['intermediate'] else 'NOT met'}; "
          f"peak ≤ 512 MiB: {'met' if met['peak'] else 'NOT met'}")


def quantize_report(args: argparse.Namespace, cli: list[str], f16: Path, out: Path) -> None:
    ours: dict[str, tuple[float, int]] = {}
    for qtype in ("Q4_K_M", "Q8_0"):
        ours[qtype] = run_measured(
            cli + ["quantize", str(f16), "-q", qtype, "-o", str(out), "--threads", str(args.threads), "--quiet"]
        )
    reference = (
        "import ctypes, sys, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        f"p.nthread = {args.threads}; p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
    )
    reference_s, _ = run_measured([sys.executable, "-c", reference, str(f16), str(out / "reference-Q4_K_M.gguf")])
    q4_s, q4_peak = ours["Q4_K_M"]
    q8_s, q8_peak = ours["Q8_0"]
    print(f"{'llama.cpp quantize → Q4_K_M (ref)':<44}{reference_s:>9.1f}{1.0:>9.2f}")
    print(f"{'synatra-local quantize → Q4_K_M':<44}{q4_s:>9.1f}{q4_s / reference_s:>9.2f}{q4_peak / MIB:>15.0f}")
    print(f"{'synatra-local quantize → Q8_0':<44}{q8_s:>9.1f}{'':>9}{q8_peak / MIB:>15.0f}")
    for path in sorted(out.glob("*.gguf")):
        print(f"  {path.name}: {path.stat().st_size / 1e9:.2f} GB")
        if path != f16:
            path.unlink()

if __name__ == "__main__":
    main()
