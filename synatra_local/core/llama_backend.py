"""The one module that talks to llama.cpp (through llama-cpp-python): loading, tokens, sampling, quantizing."""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals

from .cpu import physical_cores
from .errors import ModelFileError, SynatraError

GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_recent_errors: deque[str] = deque(maxlen=20)
_verbose = False
_loading = threading.Lock()


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp is silent unless asked; its errors are kept so that ours can quote them."""
    message = text.decode("utf-8", errors="replace")
    if _verbose:
        sys.stderr.write(message)
    elif level == GGML_LOG_LEVEL_ERROR and message.strip():
        _recent_errors.append(message.strip())


llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def binding_version() -> str:
    return llama_cpp.__version__


def supports_gpu_offload() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


GPU_BACKENDS = ("CUDA", "ROCm", "HIP", "MUSA", "Vulkan", "Metal", "SYCL", "OpenCL", "CANN")


def gpu_backends() -> list[str]:
    """The GPU backends compiled into this build (CUDA, Vulkan, …), whether or not they found a device."""
    lib, base = _ggml(), _ggml_base()
    names = [(base.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) or b"").decode()
             for i in range(lib.ggml_backend_reg_count())]
    return [name for name in names if name in GPU_BACKENDS]


def recent_errors() -> list[str]:
    """llama.cpp's latest error lines (a backend that failed to start says why here)."""
    return list(_recent_errors)


def system_info() -> str:
    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str
    free_bytes: int
    total_bytes: int


def devices() -> list[Device]:
    """Every ggml backend device (CPU, CUDA GPUs, ...) with its free and total memory."""
    lib, base = _ggml(), _ggml_base()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}.get(base.ggml_backend_dev_type(dev), "other")
        found.append(
            Device(
                name=(base.ggml_backend_dev_name(dev) or b"").decode(),
                description=(base.ggml_backend_dev_description(dev) or b"").decode(),
                kind=kind,
                free_bytes=free.value,
                total_bytes=total.value,
            )
        )
    return found


def quantize(
    source: Path, output: Path, ftype: int, threads: int, on_written: Callable[[int], None] | None = None
) -> None:
    """llama.cpp's own quantizer (`llama_model_quantize`), run in a thread so Ctrl-C stays responsive.

    llama.cpp reports no progress, so `on_written` is told how many bytes the output holds, five times a second.
    """
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    if (detail := _run_quantize(source, output, params, on_written)) is not None:
        raise SynatraError(
            f"quantizing {source} failed: {detail}", fix="check that it is an unquantized GGUF"
        )


def _run_quantize(
    source: Path, output: Path, params: llama_cpp.llama_model_quantize_params,
    on_written: Callable[[int], None] | None,
) -> str | None:
    """`llama_model_quantize` in a thread so Ctrl-C stays responsive, reporting the output's size five times a
    second (llama.cpp reports no progress); None on success, else llama.cpp's reason."""
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(output), ctypes.byref(params))
        ),
        daemon=True,
    )
    _recent_errors.clear()
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        if on_written is not None and output.exists():
            on_written(output.stat().st_size)
    if result and result[0] == 0:
        return None
    return "; ".join(_recent_errors) or "llama.cpp reported a failure"


@dataclass(frozen=True)
class GGUFHeader:
    """Scalar and string metadata of a GGUF file, each tensor's (name, ggml type id, bytes), and the vocabulary's
    tokens that are not plain text (control and user-defined tokens, BOS/EOS), by id."""

    values: dict[str, object]
    tensors: list[tuple[str, int, int]]
    special_tokens: dict[int, str] = field(default_factory=dict)


class _GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


# gguf_type ids of scalar values and the C type each getter returns.
_GGUF_SCALARS = {
    0: ("u8", ctypes.c_uint8), 1: ("i8", ctypes.c_int8), 2: ("u16", ctypes.c_uint16), 3: ("i16", ctypes.c_int16),
    4: ("u32", ctypes.c_uint32), 5: ("i32", ctypes.c_int32), 6: ("f32", ctypes.c_float), 7: ("bool", ctypes.c_bool),
    10: ("u64", ctypes.c_uint64), 11: ("i64", ctypes.c_int64), 12: ("f64", ctypes.c_double),
}
_GGUF_STRING = 8
_GGUF_ARRAY = 9
_GGUF_INT32 = 5
# llama.cpp's token types: tokens of type NORMAL and BYTE are text; the others (UNKNOWN, CONTROL, USER_DEFINED,
# UNUSED) are the vocabulary's special tokens.
_TEXT_TOKEN_TYPES = (1, 6)


@functools.cache
def _ggml() -> ctypes.CDLL:
    """The binding's libggml (device registry), with the prototypes we call declared once."""
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml.so"))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    return lib


class _ThreadpoolParams(ctypes.Structure):
    """ggml.h's `struct ggml_threadpool_params` (GGML_MAX_N_THREADS = 512 cpumask entries)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * 512),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


@functools.cache
def _ggml_cpu() -> ctypes.CDLL | None:
    """The binding's CPU backend (its thread pools), or None where the build names it otherwise."""
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"
    if not path.is_file():
        return None
    lib = ctypes.CDLL(str(path))
    lib.ggml_threadpool_new.restype = ctypes.c_void_p
    lib.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
    lib.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
    base = _ggml_base()
    base.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(_ThreadpoolParams), ctypes.c_int]
    llama = llama_cpp.llama_cpp._lib
    llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    return lib


class _Threadpool:
    """A thread pool that lives as long as its context, as llama-server and llama-cli attach one: without it ggml
    starts and joins its worker threads for every `llama_decode` (its default polling level, 50)."""

    def __init__(self, ctx: object, n_threads: int) -> None:
        self._ctx, self._pool = ctx, None
        cpu = _ggml_cpu()
        if cpu is None or n_threads < 2:
            return
        params = _ThreadpoolParams()
        _ggml_base().ggml_threadpool_params_init(ctypes.byref(params), n_threads)
        self._pool = cpu.ggml_threadpool_new(ctypes.byref(params))
        if self._pool:
            llama_cpp.llama_cpp._lib.llama_attach_threadpool(ctx, self._pool, None)

    def close(self) -> None:
        """Detach and free the pool (before the context is freed)."""
        if self._pool:
            llama_cpp.llama_cpp._lib.llama_detach_threadpool(self._ctx)
            _ggml_cpu().ggml_threadpool_free(self._pool)  # type: ignore[union-attr]
            self._pool = None


@functools.cache
def _ggml_base() -> ctypes.CDLL:
    """The binding's libggml-base (devices' details, the gguf reader), with our prototypes declared once."""
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description, lib.ggml_backend_reg_name):
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GGUFInitParams]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.gguf_find_key.restype, lib.gguf_find_key.argtypes = ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]
    lib.gguf_get_arr_type.restype, lib.gguf_get_arr_type.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_arr_n.restype, lib.gguf_get_arr_n.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_arr_data.restype, lib.gguf_get_arr_data.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_arr_str.restype = ctypes.c_char_p
    lib.gguf_get_arr_str.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t]
    for fn, restype in [
        (lib.gguf_get_n_kv, ctypes.c_int64), (lib.gguf_get_n_tensors, ctypes.c_int64),
        (lib.gguf_get_key, ctypes.c_char_p), (lib.gguf_get_kv_type, ctypes.c_int),
        (lib.gguf_get_val_str, ctypes.c_char_p), (lib.gguf_get_tensor_name, ctypes.c_char_p),
        (lib.gguf_get_tensor_type, ctypes.c_int), (lib.gguf_get_tensor_size, ctypes.c_size_t),
    ]:
        fn.restype = restype
        fn.argtypes = [ctypes.c_void_p] if fn.__name__.startswith("gguf_get_n_") else [ctypes.c_void_p, ctypes.c_int64]
    for name, ctype in _GGUF_SCALARS.values():
        getter = getattr(lib, f"gguf_get_val_{name}")
        getter.restype, getter.argtypes = ctype, [ctypes.c_void_p, ctypes.c_int64]
    return lib


def read_gguf_header(path: Path) -> GGUFHeader | None:
    """Parse a GGUF header with ggml's own C reader (milliseconds, where gguf-py needs a second for a 7B).

    Returns None when ggml cannot parse the file (damaged or truncated).
    """
    lib = _ggml_base()
    handle = lib.gguf_init_from_file(os.fsencode(path), _GGUFInitParams(True, None))
    if not handle:
        return None
    try:
        values: dict[str, object] = {}
        for i in range(lib.gguf_get_n_kv(handle)):
            key = lib.gguf_get_key(handle, i).decode("utf-8", errors="replace")
            kind = lib.gguf_get_kv_type(handle, i)
            if kind == _GGUF_STRING:
                values[key] = lib.gguf_get_val_str(handle, i).decode("utf-8", errors="replace")
            elif kind in _GGUF_SCALARS:
                values[key] = getattr(lib, f"gguf_get_val_{_GGUF_SCALARS[kind][0]}")(handle, i)
        tensors = [
            (
                lib.gguf_get_tensor_name(handle, i).decode("utf-8", errors="replace"),
                int(lib.gguf_get_tensor_type(handle, i)),
                int(lib.gguf_get_tensor_size(handle, i)),
            )
            for i in range(lib.gguf_get_n_tensors(handle))
        ]
        special_tokens = _special_tokens(lib, handle, values)
    finally:
        lib.gguf_free(handle)
    return GGUFHeader(values, tensors, special_tokens)


def _special_tokens(lib: ctypes.CDLL, handle: int, values: dict[str, object]) -> dict[int, str]:
    """Tokens whose type says they are not text, plus the BOS/EOS/EOT ids' (read without the 30k+ plain tokens)."""
    tokens = lib.gguf_find_key(handle, b"tokenizer.ggml.tokens")
    if tokens < 0 or lib.gguf_get_kv_type(handle, tokens) != _GGUF_ARRAY:
        return {}
    if lib.gguf_get_arr_type(handle, tokens) != _GGUF_STRING:
        return {}
    n_tokens = lib.gguf_get_arr_n(handle, tokens)
    types = lib.gguf_find_key(handle, b"tokenizer.ggml.token_type")
    if (
        types >= 0
        and lib.gguf_get_kv_type(handle, types) == _GGUF_ARRAY
        and lib.gguf_get_arr_type(handle, types) == _GGUF_INT32
        and lib.gguf_get_arr_n(handle, types) == n_tokens
    ):
        data = ctypes.cast(lib.gguf_get_arr_data(handle, types), ctypes.POINTER(ctypes.c_int32))
        kinds = np.ctypeslib.as_array(data, shape=(n_tokens,))
        ids = [int(i) for i in np.flatnonzero(~np.isin(kinds, _TEXT_TOKEN_TYPES))]
    else:  # no types recorded: every token may be special
        ids = list(range(n_tokens))
    for key in ("bos", "eos", "eot"):
        token_id = values.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(token_id, int) and 0 <= token_id < n_tokens:
            ids.append(token_id)
    return {
        i: lib.gguf_get_arr_str(handle, tokens, i).decode("utf-8", errors="replace") for i in sorted(set(ids))
    }


@dataclass(frozen=True)
class SpecialToken:
    """A token llama.cpp's tokenizer matches as a whole string before it splits the text around it."""

    id: int
    text: str
    control: bool  # control or unknown: matched only when special parsing is on (user-defined ones always are)
    lstrip: bool  # llama.cpp drops the whitespace before it
    rstrip: bool  # ... or after it


_PARSED_ONLY_AS_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
_MATCHED = _PARSED_ONLY_AS_SPECIAL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1


CONTEXT_PADDING = 256  # llama.cpp rounds every context size up to a multiple of this (llama-context.cpp)
PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over (the binding's and llama.cpp's default)
KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
# bytes per cached K or V element of each type (ggml's block sizes: 34 bytes per 32 for q8_0, 18 per 32 for q4_0)
KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def allocated_context(n_ctx: int) -> int:
    """The context size llama.cpp allocates when asked for `n_ctx` tokens."""
    return -(-n_ctx // CONTEXT_PADDING) * CONTEXT_PADDING


class DecodeError(SynatraError):
    """llama.cpp could not evaluate a batch (no room in the KV cache, or a failed compute)."""


class GrammarError(SynatraError):
    """llama.cpp's grammar parser refused a grammar."""


@dataclass(frozen=True)
class BatchEntry:
    """One token of a batch: which sequence it extends, at which position, and whether its logits are wanted."""

    token: int
    pos: int
    seq: int
    logits: bool


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class Sampler:
    """One sequence's sampler chain, as the binding builds it: repeat penalty, then greedy or top-k → typical →
    top-p → min-p → temperature → a seeded draw; sampling accepts the token (the penalty's history).

    A grammar is checked as llama-server checks it: the chain draws from the whole vocabulary first (inside
    llama.cpp, as an unconstrained draw does), and only if the grammar refuses that token is the draw made again
    with the grammar applied to every candidate, so most tokens pay for one grammar check instead of one per
    vocabulary entry. The re-draw applies the grammar to the best-scoring few dozen candidates first, then a few
    hundred, then a few thousand; once enough of those pass, and pass above every score left out, the draw cannot
    differ from one over the whole vocabulary (the penalty and ban only lower scores), so the whole vocabulary is
    read only when none of those runs decides it.
    """

    SHORTLISTS = (32, 512, 4096)  # how many of the best candidates the re-draw's grammar reads, in turn

    def __init__(self, model: LlamaModel, params: SamplingParams, seed: int | None, grammar: str | None) -> None:
        self._ctx = model._ctx.ctx
        self._n_vocab = model.n_vocab
        self._grammar = None
        self._draw = self._head = self._tail = None
        banned: list[int] = []
        if grammar is not None:
            # llama.cpp's grammar reads a control token as its written-out text, so `<|im_start|>` could pass as
            # characters of a JSON string; only the tokens that end the reply may appear beside the grammar's text
            banned = [t.id for t in model.special_tokens if t.control and not model.is_end_of_generation(t.id)]
            _recent_errors.clear()
            self._grammar = llama_cpp.llama_sampler_init_grammar(model._vocab, grammar.encode("utf-8"), b"root")
            if not self._grammar:
                detail = "; ".join(_recent_errors) or "the grammar does not parse"
                raise GrammarError(f"llama.cpp refused the grammar: {detail}", fix="check the grammar or JSON schema")
            # the re-draw's two halves: penalty and ban (its scores are kept), then the draw itself
            self._head = _chain([_penalties(model, params), _logit_ban(model, banned)])
            self._tail = _chain(_draw_samplers(params, seed))
            self._candidates = np.zeros(model.n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(model.n_vocab, dtype=np.int32)
            self._one = np.zeros(1, dtype=_TOKEN_DATA)
            self._history: deque[int] = deque(maxlen=PENALTY_LAST_N)
        self._draw = _chain([_penalties(model, params), *([_logit_ban(model, banned)] if banned else []),
                             *_draw_samplers(params, seed)])
        # how many tokens the draw can choose among: the best one, or top-k of them (everything when top-k is off)
        self._draw_width = 1 if params.temperature == 0.0 else params.top_k if params.top_k > 0 else model.n_vocab

    def sample(self, index: int) -> int:
        """The next token from the logits of the last batch's entry `index`."""
        token = int(llama_cpp.llama_sampler_sample(self._draw, self._ctx, index))  # accepted by its penalty
        if self._grammar is None:
            return token
        if not self._allowed(token):
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
            candidates = self._whole_vocabulary(row)
            self._apply(self._head, candidates)  # penalty and ban: scores change, order does not
            token = self._redraw(candidates["logit"].copy())
            self._history.append(token)
            self._replay_penalty()
        else:
            self._history.append(token)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._head, token)
        llama_cpp.llama_sampler_accept(self._tail, token)
        return token

    def _replay_penalty(self) -> None:
        """The first draw's penalty took the refused token into its history: rebuild it from the tokens chosen."""
        penalty = llama_cpp.llama_sampler_chain_get(self._draw, 0)
        llama_cpp.llama_sampler_reset(penalty)
        for token in self._history:
            llama_cpp.llama_sampler_accept(penalty, token)

    def _redraw(self, scores: np.ndarray) -> int:
        """The draw again, from the candidates the grammar allows: read in growing runs of the best scores, so the
        grammar judges a few dozen tokens where that decides the draw and the whole vocabulary only where none
        does (a refused first draw's best allowed token ranked from 0 to ~8,000 of SmolLM2's 49,152)."""
        widths = [w for w in self.SHORTLISTS if self._draw_width <= w < self._n_vocab]
        if widths:
            top = widths[-1]
            best = np.argpartition(-scores, top)
            beyond = scores[best[top]]  # the best score outside the longest run
            ranked = best[:top][np.argsort(-scores[best[:top]], kind="stable")]
            allowed = np.zeros(0, dtype=_TOKEN_DATA)
            for width in widths:
                run = np.zeros(width - len(allowed), dtype=_TOKEN_DATA)
                run["id"] = ranked[len(allowed) : width]
                run["logit"] = scores[run["id"]]
                self._apply(self._grammar, run)  # the grammar marks refused tokens -inf; it keeps no state
                allowed = np.concatenate([allowed, run])
                passed = allowed["logit"][np.isfinite(allowed["logit"])]
                left_out = scores[ranked[width]] if width < top else beyond
                # scores are in descending order, so the draw_width-th pass is passed[draw_width - 1]
                if len(passed) >= self._draw_width and passed[self._draw_width - 1] > left_out:
                    return int(allowed["id"][self._apply(self._tail, allowed)])
        candidates = self._whole_vocabulary(scores)
        self._apply(self._grammar, candidates)
        return int(candidates["id"][self._apply(self._tail, candidates)])

    def _whole_vocabulary(self, scores: np.ndarray) -> np.ndarray:
        """Every token as a candidate with its score, in id order (the samplers sort and trim the array in place)."""
        candidates = self._candidates
        candidates["id"] = self._ids
        candidates["logit"] = scores
        candidates["p"] = 0.0
        return candidates

    @staticmethod
    def _apply(sampler: object, candidates: np.ndarray) -> int:
        """Run one sampler (or chain) over a llama_token_data array in place; the selected index, if any."""
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(llama_cpp.llama_token_data_p), len(candidates), -1, False
        )
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return int(array.selected)

    def _allowed(self, token: int) -> bool:
        one = self._one
        one[0] = (token, 0.0, 0.0)
        self._apply(self._grammar, one)
        return bool(np.isfinite(one["logit"][0]))

    def close(self) -> None:
        for name in ("_draw", "_head", "_tail", "_grammar"):
            sampler = getattr(self, name, None)
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
                setattr(self, name, None)

    def __del__(self) -> None:
        self.close()


def _chain(samplers: list[object]) -> object:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in samplers:
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain


def _penalties(model: LlamaModel, params: SamplingParams) -> object:
    return llama_cpp.llama_sampler_init_penalties(model.n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0)


def _logit_ban(model: LlamaModel, banned: list[int]) -> object:
    biases = (llama_cpp.llama_logit_bias * len(banned))(*[(t, -math.inf) for t in banned])
    return llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(banned), biases)


def _draw_samplers(params: SamplingParams, seed: int | None) -> list[object]:
    """Greedy, or top-k → typical → top-p → min-p → temperature → a seeded draw (the binding's order)."""
    if params.temperature == 0.0:
        return [llama_cpp.llama_sampler_init_greedy()]
    return [
        llama_cpp.llama_sampler_init_top_k(params.top_k),
        llama_cpp.llama_sampler_init_typical(1.0, 1),
        llama_cpp.llama_sampler_init_top_p(params.top_p, 1),
        llama_cpp.llama_sampler_init_min_p(params.min_p, 1),
        llama_cpp.llama_sampler_init_temp(params.temperature),
        llama_cpp.llama_sampler_init_dist(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed),
    ]


class LlamaModel:
    """A loaded GGUF with one context holding `n_seq` sequences: tokenizer, batched decoding, sampler chains.

    `n_ctx` is each sequence's context: llama.cpp allocates `n_seq` of them (its KV cache is not unified), so
    every sequence can hold a whole conversation of that length, and `kv_bytes` says what that costs.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        n_seq: int = 1,
        kv_type: str = "f16",
        logits_all: bool = False,
        flash_attn: bool = True,
        repack: bool = True,
    ) -> None:
        if kv_type not in KV_TYPES:
            raise SynatraError(f"unknown KV cache type {kv_type!r}", fix=f"choose one of {', '.join(KV_TYPES)}")
        if kv_type != "f16" and not flash_attn:
            raise SynatraError(f"a {kv_type} KV cache needs flash attention", fix="use --kv-type f16")
        _recent_errors.clear()
        n_threads = n_threads or physical_cores()
        self.kv_type = kv_type
        self._logits_all = logits_all
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        model_params.use_extra_bufts = repack
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = allocated_context(n_ctx) * n_seq
        context_params.n_seq_max = n_seq
        context_params.n_batch = context_params.n_ubatch = n_batch
        context_params.n_threads = context_params.n_threads_batch = n_threads
        context_params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        context_params.type_k = context_params.type_v = KV_TYPES[kv_type]
        context_params.no_perf = True
        try:
            with _loading:
                self._model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=_verbose)
                try:
                    self._ctx = _internals.LlamaContext(model=self._model, params=context_params, verbose=_verbose)
                except BaseException:
                    self._model.close()
                    raise
        except (ValueError, RuntimeError) as exc:
            detail = "; ".join(_recent_errors) or str(exc)
            raise ModelFileError(
                f"llama.cpp could not load {path}: {detail}", fix="re-convert or re-download it"
            ) from exc
        finally:
            llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
        self._threadpool = _Threadpool(self._ctx.ctx, n_threads)
        self._vocab = self._model.vocab
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self.n_batch = n_batch
        self.n_seq = n_seq
        self._n_threads = n_threads
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._input_pieces: dict[int, bytes] = {}
        self._all_logits: list[np.ndarray] = []
        self.evaluated_tokens = 0  # every token decoded since load, for statistics and tests

    @functools.cached_property
    def n_ctx(self) -> int:
        """Each sequence's context (what llama.cpp allocated for it; fixed for the context's life, and read for
        every sampled token)."""
        return int(llama_cpp.llama_n_ctx_seq(self._ctx.ctx))

    @property
    def n_threads(self) -> int:
        return self._n_threads

    @functools.cached_property
    def n_vocab(self) -> int:
        return int(llama_cpp.llama_vocab_n_tokens(self._vocab))

    @property
    def bos_id(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    @property
    def eos_id(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self._vocab))

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    @property
    def adds_eos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_eos(self._vocab))

    @functools.cached_property
    def n_params(self) -> int:
        return int(llama_cpp.llama_model_n_params(self._model.model))

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV cache llama.cpp allocated: every layer's K and V for every cell of every sequence."""
        model = self._model.model
        n_embd, n_head = llama_cpp.llama_model_n_embd(model), llama_cpp.llama_model_n_head(model)
        n_head_kv = llama_cpp.llama_model_n_head_kv(model) or n_head
        per_cell = 2 * llama_cpp.llama_model_n_layer(model) * (n_embd // n_head) * n_head_kv
        return int(per_cell * int(llama_cpp.llama_n_ctx(self._ctx.ctx)) * KV_TYPE_BYTES[self.kv_type])

    @functools.cached_property
    def special_tokens(self) -> tuple[SpecialToken, ...]:
        """Every token llama.cpp matches as a string, in the order it tries them: longest text first.

        Read once from the loaded vocabulary's attributes (what llama.cpp itself uses, after its own fixes
        to the file's token types); a text that is not UTF-8 could never be matched in a Python string.
        """
        found = []
        for token in range(llama_cpp.llama_vocab_n_tokens(self._vocab)):
            attr = llama_cpp.llama_vocab_get_attr(self._vocab, token)
            if not attr & _MATCHED:
                continue
            try:
                text = llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8")
            except UnicodeDecodeError:
                continue
            if text:
                found.append(SpecialToken(
                    token, text, bool(attr & _PARSED_ONLY_AS_SPECIAL),
                    bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP), bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP),
                ))
        return tuple(sorted(found, key=lambda t: -len(t.text.encode("utf-8"))))

    @functools.cached_property
    def metadata(self) -> dict[str, str]:
        return self._model.metadata()

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """llama.cpp's tokenizer, into a buffer sized by the text."""
        data = text.encode("utf-8")
        size = len(data) + 2  # a token covers at least one byte; + BOS and EOS
        buffer = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, size, add_bos, special)
        if n < 0:  # never for a byte-level vocabulary; llama.cpp says how many it needs
            size = -n
            buffer = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, size, add_bos, special)
        return buffer[:n]

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for in generated text; control tokens stand for nothing (cached per id)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def input_bytes(self, token: int) -> bytes:
        """The bytes a token stands for in model input: control tokens as their text (`<s>`), as llama-server's
        /detokenize shows them, so that tokenizing the text with special parsing gives the token back."""
        piece = self._input_pieces.get(token)
        if piece is None:
            piece = self._input_pieces[token] = self._piece(token, special=True)
        return piece

    def _piece(self, token: int, size: int = 64, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
        if n < 0:  # the piece is longer than the buffer: llama.cpp says how long
            return self._piece(token, -n, special=special)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- sequences and batches --------------------------------------------------------------------------------

    def sampler(self, params: SamplingParams, *, seed: int | None, grammar: str | None = None) -> Sampler:
        """A fresh sampler chain for one reply; a fixed seed repeats text, None draws a random one."""
        return Sampler(self, params, seed, grammar)

    def forget(self, seq: int, start: int = 0) -> None:
        """Drop sequence `seq`'s cached tokens from position `start` on."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq, start, -1)

    def copy_prefix(self, src: int, dst: int, count: int) -> None:
        """Make sequence `dst` hold `src`'s first `count` cached tokens instead of its own. Each sequence has a KV
        cache of its own, so llama.cpp copies the whole of src's (when the next batch is decoded); the rest is
        dropped. Worth it where reading those tokens again would cost more than copying `n_ctx` cells."""
        llama_cpp.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, dst, count, -1)

    def decode(self, entries: list[BatchEntry]) -> None:
        """Evaluate one batch (at most `n_batch` entries) across sequences with one `llama_decode` call.

        The logits of an entry that asked for them are then `logits_row(i)`, `i` its index in the batch.
        """
        batch = self._batch
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.seq
            batch.logits[i] = entry.logits
        batch.n_tokens = len(entries)
        _recent_errors.clear()
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            detail = "; ".join(_recent_errors) or f"llama_decode returned {status}"
            raise DecodeError(f"llama.cpp could not evaluate the batch: {detail}", fix="lower --parallel or --ctx")
        self.evaluated_tokens += len(entries)

    def logits_row(self, index: int) -> np.ndarray:
        """The logits of the last batch's entry `index` (a view, valid until the next decode)."""
        row = llama_cpp.llama_get_logits_ith(self._ctx.ctx, index)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,))

    def evaluate(self, tokens: list[int]) -> None:
        """Run `tokens` from scratch in sequence 0, keeping every position's logits when `logits_all` was asked."""
        self.forget(0)
        self._all_logits = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            self.decode([
                BatchEntry(token, start + i, 0, self._logits_all or (last and i == len(chunk) - 1))
                for i, token in enumerate(chunk)
            ])
            if self._logits_all:
                self._all_logits.append(np.stack([self.logits_row(i) for i in range(len(chunk))]))

    def logits(self) -> np.ndarray:
        """Logits of every position `evaluate` ran, [n_tokens, n_vocab] (needs `logits_all=True`)."""
        return np.concatenate(self._all_logits) if self._all_logits else np.zeros((0, self.n_vocab), np.float32)

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._threadpool.close()
        self._ctx.close()
        self._model.close()


# --- JSON schema → GBNF (structured output) ---------------------------------------------------------------------
# runtime/structured.py checks and rewrites the schema into what this converter enforces; this only calls it.


def json_schema_to_gbnf(schema_json: str) -> str:
    """GBNF for JSON valid against `schema_json`, from the converter llama-cpp-python ships (llama_grammar)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    return convert(schema_json)


# ================================================================================================================
# Quality (issue 11): whole-window logits for `eval`, the activations entering each weight matrix for `imatrix`,
# and llama.cpp's quantizer with an importance matrix. A separate section on purpose: it uses llama.cpp's low-level
# API directly (its own model and context) and shares only the log callback and the error list with the code above.
# ================================================================================================================

# (weight name, src0's ne[2] and ne[3], activations [ne3, ne2, ne1, ne0] float32): one matrix multiplication's input.
MatmulObserver = Callable[[str, tuple[int, int], np.ndarray], None]

_GGML_TYPE_F32 = 0
_UBATCH = 512  # llama.cpp's default micro-batch (common.h), which llama-perplexity and llama-imatrix run with


class _GGMLTensor(ctypes.Structure):
    """`struct ggml_tensor` (ggml.h) as far as the evaluation callback reads it."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


@functools.cache
def _ggml_tensor_api() -> ctypes.CDLL:
    """libggml-base's tensor helpers the evaluation callback needs (op names, sizes, copying out of any backend)."""
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_nbytes.restype, lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


@functools.cache
def _op_name(op: int) -> str:
    return (_ggml_tensor_api().ggml_op_name(op) or b"").decode()


def _weight_name(raw: bytes) -> str:
    """`CUDA0#blk.0.attn_k.weight#0` → `blk.0.attn_k.weight` (the scheduler's copies carry prefixes)."""
    name = raw.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


class _MatmulTap:
    """The context's evaluation callback: asks for the matrix multiplications llama-imatrix collects and hands each
    one's input activations to an observer. Errors are kept and re-raised after the decode they stopped."""

    def __init__(self, observer: MatmulObserver) -> None:
        self.observer = observer
        self.error: BaseException | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._call)

    def _call(self, tensor_p: int, ask: bool, user_data: int) -> bool:
        try:
            return self._handle(_GGMLTensor.from_address(tensor_p), tensor_p, ask)
        except BaseException as exc:  # an exception must not cross into C: stop the graph and report it after
            self.error = exc
            return False

    def _handle(self, t: _GGMLTensor, tensor_p: int, ask: bool) -> bool:
        op = _op_name(t.op)
        src0 = _GGMLTensor.from_address(t.src[0]) if t.src[0] else None
        src1 = _GGMLTensor.from_address(t.src[1]) if t.src[1] else None
        if src0 is None or src1 is None:
            return not ask
        name = _weight_name(src0.name)
        if ask:  # llama-imatrix's rule: every MUL_MAT_ID; MUL_MAT on F32 input of 16+ rows into a block's weight
            if op == "MUL_MAT_ID":
                return True
            return op == "MUL_MAT" and src1.ne[1] >= 16 and src1.type == _GGML_TYPE_F32 and name.startswith("blk.")
        if op == "MUL_MAT_ID":
            raise SynatraError(
                f"{name} is a mixture-of-experts weight; importance matrices of such models are not supported yet",
                fix="use llama.cpp's llama-imatrix for mixture-of-experts models",
            )
        if src1.nb[0] != 4:
            raise SynatraError(f"unexpected activation layout for {name}", fix="report this model")
        api = _ggml_tensor_api()
        raw = np.empty(api.ggml_nbytes(t.src[1]), dtype=np.uint8)  # copied out, wherever the backend keeps it
        api.ggml_backend_tensor_get(t.src[1], raw.ctypes.data, 0, raw.nbytes)
        shape = (src1.ne[3], src1.ne[2], src1.ne[1], src1.ne[0])
        strides = (src1.nb[3], src1.nb[2], src1.nb[1], src1.nb[0])
        activations = np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=shape, strides=strides)
        self.observer(name, (int(src0.ne[2]), int(src0.ne[3])), activations)
        return True


def text_windows(tokens: list[int], n_ctx: int, chunks: int | None = None) -> list[list[int]]:
    """llama-perplexity's and llama-imatrix's windows: `len(tokens) // n_ctx` (at most `chunks`), non-overlapping;
    like them, refused for a text of fewer than two windows."""
    if len(tokens) < 2 * n_ctx:
        raise SynatraError(
            f"the text has {len(tokens)} tokens; windows of {n_ctx} need at least {2 * n_ctx}",
            fix="use a smaller --ctx or a longer --text",
        )
    count = len(tokens) // n_ctx if chunks is None else min(len(tokens) // n_ctx, chunks)
    return [tokens[i * n_ctx : (i + 1) * n_ctx] for i in range(count)]


class WindowModel:
    """A model scored the way llama-perplexity and llama-imatrix score text: one sequence at a time, the KV cache
    cleared before each window, its first token replaced by BOS (when the vocabulary adds one), and logits kept for
    the positions asked for. With an `observer`, every qualifying matrix multiplication's input is handed to it."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        observer: MatmulObserver | None = None,
    ) -> None:
        _recent_errors.clear()
        n_threads = n_threads or physical_cores()
        self.n_window = n_ctx
        self.n_batch = min(n_batch, n_ctx)
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        with _loading:
            self._model = llama_cpp.llama_model_load_from_file(os.fsencode(path), model_params)
        if not self._model:
            detail = "; ".join(_recent_errors) or "llama.cpp could not read it"
            raise ModelFileError(f"llama.cpp could not load {path}: {detail}", fix="re-convert or re-download it")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._tap = _MatmulTap(observer) if observer is not None else None
        self._threads = n_threads
        self._ctx: llama_cpp.llama_context_p | None = None  # made at the first window
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))

    def _context(self) -> llama_cpp.llama_context_p:
        if self._ctx is None:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self.n_window
            params.n_batch = self.n_batch
            params.n_ubatch = min(self.n_batch, _UBATCH)
            params.n_seq_max = 1
            params.n_threads = params.n_threads_batch = self._threads
            params.no_perf = True
            if self._tap is not None:
                params.cb_eval = self._tap.callback
                params.cb_eval_user_data = None
            ctx = llama_cpp.llama_init_from_model(self._model, params)
            if not ctx:
                detail = "; ".join(_recent_errors) or "out of memory?"
                raise SynatraError(f"llama.cpp could not create a {self.n_window}-token context: {detail}",
                                   fix="use a smaller --ctx")
            self._ctx = ctx
            self._threadpool = _Threadpool(ctx, self._threads)
            self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        return self._ctx

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    @property
    def bos_id(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    def tokenize(self, text: str) -> list[int]:
        """The whole text as llama-perplexity reads it: BOS (if the vocabulary adds one), special strings as text."""
        data = text.encode("utf-8")
        size = len(data) + 2
        buffer = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, size, True, False)
        if n < 0:
            size = -n
            buffer = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, size, True, False)
        return list(buffer[:n])

    def window_logits(self, tokens: list[int], first: int, *, keep: bool = True) -> np.ndarray:
        """Logits [len(tokens) - first, n_vocab] of positions first … end, after evaluating `tokens` from an empty
        cache with the first token replaced by BOS. `keep=False` still has llama.cpp compute those positions' outputs
        (llama-imatrix asks for all of them, so the last layer sees every token) but returns none."""
        if not 0 < len(tokens) <= self.n_window:
            raise ValueError(f"a window holds 1 … {self.n_window} tokens, not {len(tokens)}")
        tokens = list(tokens)
        if self.adds_bos:
            tokens[0] = self.bos_id
        ctx = self._context()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        rows: list[np.ndarray] = []
        batch = self._batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            outputs = 0
            for k, token in enumerate(chunk):
                pos = start + k
                batch.token[k] = token
                batch.pos[k] = pos
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = pos >= first
                outputs += pos >= first
            batch.n_tokens = len(chunk)
            status = llama_cpp.llama_decode(ctx, batch)
            if self._tap is not None and self._tap.error is not None:
                error, self._tap.error = self._tap.error, None
                raise error
            if status != 0:
                detail = "; ".join(_recent_errors) or f"status {status}"
                raise SynatraError(f"llama.cpp could not evaluate the text: {detail}", fix="try a smaller --batch")
            if outputs and keep:
                pointer = llama_cpp.llama_get_logits(ctx)
                rows.append(np.ctypeslib.as_array(pointer, shape=(outputs, self.n_vocab)).copy())
        if not rows:  # nothing kept
            return np.empty((0, self.n_vocab), dtype=np.float32)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def close(self) -> None:
        if self._ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._threadpool.close()
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> WindowModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quantize_with_imatrix(
    source: Path,
    output: Path,
    ftype: int,
    threads: int,
    imatrix: dict[str, np.ndarray],
    metadata: dict[str, str | int],
    on_written: Callable[[int], None] | None = None,
) -> None:
    """llama.cpp's quantizer with an importance matrix ({weight name: mean squared activation per column}), as
    llama-quantize --imatrix passes it; `metadata` is recorded in the output (quantize.imatrix.file, …)."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    names = [name.encode() for name in imatrix]
    arrays = [np.ascontiguousarray(values, dtype=np.float32) for values in imatrix.values()]
    entries = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()  # ends with a null entry
    for entry, name, values in zip(entries[:-1], names, arrays, strict=True):
        entry.name = name
        entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entry.size = values.size
    params.imatrix = entries
    overrides = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()  # ends with an empty key
    for override, (key, value) in zip(overrides[:-1], metadata.items(), strict=True):
        override.key = key.encode()
        if isinstance(value, int):
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            override.value.val_i64 = value
        else:
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            override.value.val_str = value.encode()[:127]
    params.kv_overrides = overrides
    if (detail := _run_quantize(source, output, params, on_written)) is not None:
        raise SynatraError(f"quantizing {source} with an importance matrix failed: {detail}",
                           fix="make the matrix from this model (synatra-local imatrix) or use --imatrix auto")
