"""The one module that talks to llama.cpp (through llama-cpp-python): loading, tokens, sampling, quantizing."""

from __future__ import annotations

import ctypes
import functools
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
    if not result or result[0] != 0:
        detail = "; ".join(_recent_errors) or "llama.cpp reported a failure"
        raise SynatraError(
            f"quantizing {source} failed: {detail}", fix="check that it is an unquantized GGUF"
        )


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


class Sampler:
    """One sequence's sampler chain, as the binding builds it: repeat penalty, grammar, then greedy or
    top-k → typical → top-p → min-p → temperature → a seeded draw. Sampling accepts the token into the chain
    (the penalty's history, the grammar's state)."""

    def __init__(self, model: LlamaModel, params: SamplingParams, seed: int | None, grammar: str | None) -> None:
        self._ctx = model._ctx.ctx
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = functools.partial(llama_cpp.llama_sampler_chain_add, self._chain)
        add(llama_cpp.llama_sampler_init_penalties(model.n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0))
        if grammar is not None:
            _recent_errors.clear()
            constraint = llama_cpp.llama_sampler_init_grammar(model._vocab, grammar.encode("utf-8"), b"root")
            if not constraint:
                self.close()
                detail = "; ".join(_recent_errors) or "the grammar does not parse"
                raise GrammarError(f"llama.cpp refused the grammar: {detail}", fix="check the grammar or JSON schema")
            add(constraint)
        if params.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(llama_cpp.llama_sampler_init_typical(1.0, 1))
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            add(llama_cpp.llama_sampler_init_dist(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed))

    def sample(self, index: int) -> int:
        """The next token from the logits of the last batch's entry `index`."""
        return int(llama_cpp.llama_sampler_sample(self._chain, self._ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()


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
        self._vocab = self._model.vocab
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self.n_batch = n_batch
        self.n_seq = n_seq
        self._n_threads = n_threads
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._all_logits: list[np.ndarray] = []
        self.evaluated_tokens = 0  # every token decoded since load, for statistics and tests

    @property
    def n_ctx(self) -> int:
        """Each sequence's context (what llama.cpp allocated for it)."""
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

    def _piece(self, token: int, size: int = 64) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, False)
        if n < 0:  # the piece is longer than the buffer: llama.cpp says how long
            return self._piece(token, -n)
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
        self._ctx.close()
        self._model.close()


# --- JSON schema → GBNF (structured output) ---------------------------------------------------------------------
# runtime/structured.py checks and rewrites the schema into what this converter enforces; this only calls it.


def json_schema_to_gbnf(schema_json: str) -> str:
    """GBNF for JSON valid against `schema_json`, from the converter llama-cpp-python ships (llama_grammar)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    return convert(schema_json)
