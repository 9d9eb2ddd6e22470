"""An independent Mistral forward pass in numpy, in Hugging Face's layout (rotate-half rope, no permute).

It reads the checkpoint's own tensors, so agreeing with llama.cpp on a converted GGUF proves the q/k
permutation, the tensor mapping and the hyperparameters, not just that the file loads.
"""

from __future__ import annotations

import numpy as np


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """HF's rotary embedding: the first and second halves of each head form the rotated pairs."""
    seq, _, dim = x.shape
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    angles = np.outer(np.arange(seq, dtype=np.float64), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def mistral_logits(
    weights: dict[str, np.ndarray], config: dict, tokens: list[int], inputs: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Logits [len(tokens), vocab] of a causal Mistral/Llama model, computed in float64.

    `inputs`, when given, receives the activations [len(tokens), columns] entering each block's weight matrix,
    under llama.cpp's tensor names (blk.0.attn_q.weight, ...), for importance-matrix checks.
    """
    record = inputs if inputs is not None else {}
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_heads)
    hidden = config["hidden_size"]
    head_dim = hidden // n_heads
    eps = config.get("rms_norm_eps", 1e-5)
    theta = config.get("rope_theta", 10000.0)
    seq = len(tokens)
    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((seq, seq), -np.inf), k=1)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        for name in ("attn_q", "attn_k", "attn_v"):
            record[f"blk.{i}.{name}.weight"] = h
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(seq, n_heads, head_dim)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(seq, n_kv, head_dim)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(seq, n_kv, head_dim)
        q, k = _rope(q, theta), _rope(k, theta)
        group = n_heads // n_kv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(seq, n_heads * head_dim)
        record[f"blk.{i}.attn_output.weight"] = attn
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        record[f"blk.{i}.ffn_gate.weight"] = record[f"blk.{i}.ffn_up.weight"] = h
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        record[f"blk.{i}.ffn_down.weight"] = gate / (1.0 + np.exp(-gate)) * up
        x = x + record[f"blk.{i}.ffn_down.weight"] @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], eps)
    return x @ w["lm_head.weight"].T
