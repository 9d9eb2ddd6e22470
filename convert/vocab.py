"""The sentencepiece vocabulary of a Llama/Mistral checkpoint, as llama.cpp expects it in GGUF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sentencepiece import SentencePieceProcessor

from synatra_local.core.errors import CheckpointError
from synatra_local.core.gguf_lib import gguf

from .files import read_json

TokenType = gguf.TokenType


@dataclass
class Vocabulary:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    special: gguf.SpecialVocab

    def __len__(self) -> int:
        return len(self.tokens)

    def token_id(self, text: str) -> int | None:
        try:
            return self.tokens.index(text.encode("utf-8"))
        except ValueError:
            return None

    def add_to_gguf(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        self.special.add_to_gguf(writer, quiet=True)


def load_vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    """Read `tokenizer.model` plus added tokens, padded to the model's embedding rows.

    Added tokens marked special (v0.3's `<|im_end|>`, `<|im_start|>`) become CONTROL tokens so that llama.cpp
    parses them in prompts and treats `<|im_end|>` as end of turn.
    """
    model_path = folder / "tokenizer.model"
    if not model_path.is_file():
        raise CheckpointError(
            f"{model_path} is missing: Synatra and Mistral checkpoints ship a sentencepiece tokenizer.model",
            fix="download tokenizer.model from the model repository into this folder",
        )
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(model_path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"{model_path} is not a sentencepiece model ({exc})", fix="re-download it"
        ) from exc

    size = max(vocab_size, sp.vocab_size())
    ids = list(range(sp.vocab_size()))  # sentencepiece answers a list of ids in one call each
    tokens = [piece.encode("utf-8") for piece in sp.IdToPiece(ids)]
    tokens += [f"[PAD{i}]".encode() for i in range(len(ids), size)]
    scores = sp.GetScore(ids) + [-1000.0] * (size - len(ids))
    kinds = zip(sp.IsUnknown(ids), sp.IsControl(ids), sp.IsUnused(ids), sp.IsByte(ids), strict=True)
    types = [int(_piece_type(*kind)) for kind in kinds] + [int(TokenType.UNUSED)] * (size - len(ids))

    for token_id, text, special in _added_tokens(folder):
        if token_id >= size:
            raise CheckpointError(
                f"{folder}: added token {text!r} has id {token_id}, beyond the model's {size} embedding rows",
                fix="check that added_tokens.json belongs to this checkpoint",
            )
        if token_id < sp.vocab_size() and tokens[token_id] == text.encode("utf-8"):
            continue
        tokens[token_id] = text.encode("utf-8")
        scores[token_id] = -1000.0
        types[token_id] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)

    special = gguf.SpecialVocab(folder, n_vocab=size)
    # SpecialVocab finds <unk> only in a tokenizer.json, which Synatra repos do not ship.
    special.special_token_ids.setdefault("unk", sp.unk_id())
    return Vocabulary(tokens, scores, types, special)


def _piece_type(unknown: bool, control: bool, unused: bool, byte: bool) -> TokenType:
    if unknown:
        return TokenType.UNKNOWN
    if control:
        return TokenType.CONTROL
    if unused:
        return TokenType.UNUSED
    if byte:
        return TokenType.BYTE
    return TokenType.NORMAL


def _added_tokens(folder: Path) -> list[tuple[int, str, bool]]:
    """Added tokens from tokenizer_config.json (which knows which are special) and added_tokens.json."""
    found: dict[int, tuple[str, bool]] = {}
    added_json = folder / "added_tokens.json"
    if added_json.is_file():
        for text, token_id in read_json(added_json).items():
            found[int(token_id)] = (text, True)
    config = folder / "tokenizer_config.json"
    if config.is_file():
        for token_id, entry in (read_json(config).get("added_tokens_decoder") or {}).items():
            found[int(token_id)] = (entry["content"], bool(entry.get("special", False)))
    return [(i, text, special) for i, (text, special) in sorted(found.items())]
