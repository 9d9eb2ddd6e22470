"""Synatra-shaped checkpoints with random weights: the demo model, test fixtures and benchmark inputs.

The files are real (config, sentencepiece tokenizer, tokenizer_config with the version's chat template,
PyTorch zip-pickle or safetensors shards); only the weights are random, so what the model says is noise.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .reference_chat_templates import CHAT_TEMPLATES
from .safetensors_file import write_safetensors
from .tensors import f32_to_bf16_bits
from .torch_zip import write_torch_checkpoint

VERSION_FORMATS = {"v0.1": "synatra-v0.1", "v0.2": "synatra-v0.2", "v0.3": "chatml"}
CHATML_TOKENS = {"<|im_end|>": 32000, "<|im_start|>": 32001}


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    context_length: int = 4096


TINY = ModelShape()
MISTRAL_7B = ModelShape(4096, 14336, 32, 32, 8, 32768)


def mistral_v1_tokenizer() -> Path:
    """The real Mistral v1 sentencepiece model, which the mistral-common package ships as data."""
    import importlib.util

    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo tokenizer comes from mistral-common: pip install 'synatra-local[demo]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"


def build_checkpoint(
    folder: Path,
    *,
    version: str = "v0.1",
    weights: str = "bin",
    dtype: str = "F16",
    shards: int = 1,
    shape: ModelShape = TINY,
    seed: int = 0,
    tokenizer_model: Path | None = None,
    chat_template: bool = True,
) -> Path:
    """Write a complete Hugging Face folder for a Synatra-`version`-shaped model with random weights.

    `chat_template=False` leaves the template out of tokenizer_config.json, as in checkpoints of Synatra's age.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = 32002 if version == "v0.3" else 32000
    shape = replace(shape)
    _write_metadata(folder, version, shape, vocab_size, dtype, chat_template)
    shutil.copyfile(tokenizer_model or mistral_v1_tokenizer(), folder / "tokenizer.model")
    shapes = dict(_tensor_shapes(shape, vocab_size))
    names = list(shapes)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    groups = [sorted(g, key=names.index) for g in groups]
    suffix = "bin" if weights == "bin" else "safetensors"
    stem = "pytorch_model" if weights == "bin" else "model"
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, 1):
        file = f"{stem}.{suffix}" if shards == 1 else f"{stem}-{i:05d}-of-{shards:05d}.{suffix}"
        tensors = {n: _random_tensor(n, shapes[n], dtype, seed) for n in group}
        dtypes = {n: _storage_dtype(n, dtype) for n in tensors}
        if weights == "bin":
            write_torch_checkpoint(folder / file, tensors, dtypes)
        else:
            write_safetensors(folder / file, tensors, dtypes, metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(group, file))
    if shards > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2))
    return folder


def _tensor_shapes(s: ModelShape, vocab: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    head_dim = s.hidden_size // s.num_heads
    yield "model.embed_tokens.weight", (vocab, s.hidden_size)
    for i in range(s.num_layers):
        p = f"model.layers.{i}"
        yield f"{p}.self_attn.q_proj.weight", (s.num_heads * head_dim, s.hidden_size)
        yield f"{p}.self_attn.k_proj.weight", (s.num_kv_heads * head_dim, s.hidden_size)
        yield f"{p}.self_attn.v_proj.weight", (s.num_kv_heads * head_dim, s.hidden_size)
        yield f"{p}.self_attn.o_proj.weight", (s.hidden_size, s.num_heads * head_dim)
        yield f"{p}.mlp.gate_proj.weight", (s.intermediate_size, s.hidden_size)
        yield f"{p}.mlp.up_proj.weight", (s.intermediate_size, s.hidden_size)
        yield f"{p}.mlp.down_proj.weight", (s.hidden_size, s.intermediate_size)
        yield f"{p}.input_layernorm.weight", (s.hidden_size,)
        yield f"{p}.post_attention_layernorm.weight", (s.hidden_size,)
    yield "model.norm.weight", (s.hidden_size,)
    yield "lm_head.weight", (vocab, s.hidden_size)


def _storage_dtype(name: str, dtype: str) -> str:
    """Like the real shards: norms are sometimes kept in float32 while matrices are fp16."""
    return "F32" if name.endswith("norm.weight") and dtype == "F16" else dtype


def _random_tensor(name: str, shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, sum(name.encode())])
    if len(shape) == 1:
        values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    else:
        scale = 1.0 if "embed" in name else 1.0 / np.sqrt(shape[1])
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    storage = _storage_dtype(name, dtype)
    if storage == "BF16":
        return f32_to_bf16_bits(values)
    return values.astype(np.float16 if storage == "F16" else np.float32)


def _write_metadata(
    folder: Path, version: str, s: ModelShape, vocab_size: int, dtype: str, chat_template: bool
) -> None:
    torch_dtype = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}[dtype]
    config = {
        "_name_or_path": f"maywell/Synatra-7B-{version}-shaped-random",
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": vocab_size,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "max_position_embeddings": s.context_length,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": torch_dtype,
    }
    specials = {0: "<unk>", 1: "<s>", 2: "</s>"}
    if version == "v0.3":
        specials |= {v: k for k, v in CHATML_TOKENS.items()}
        (folder / "added_tokens.json").write_text(json.dumps(CHATML_TOKENS, indent=2))
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "LlamaTokenizer",
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        **({"chat_template": CHAT_TEMPLATES[VERSION_FORMATS[version]]} if chat_template else {}),
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in specials.items()
        },
    }
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    generation = {"bos_token_id": 1, "eos_token_id": [2, 32000] if version == "v0.3" else 2}
    readme = (
        "---\nlicense: cc-by-nc-4.0\nlanguage:\n- ko\n---\n\n"
        f"# Synatra-7B-{version}-shaped random checkpoint\n\nRandom weights for tests and demos; it says nothing.\n"
    )
    for name, payload in [
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", special_map),
        ("generation_config.json", generation),
    ]:
        (folder / name).write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / "README.md").write_text(readme, encoding="utf-8")
