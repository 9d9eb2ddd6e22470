"""GGUF metadata keys of our own, shared by the converter (which writes them) and the runtime (which reads them),
and the rules that name a GGUF's prompt format from its metadata alone, for GGUFs that we did not make too."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

PROMPT_FORMAT_KEY = "synatra.prompt_format"
SOURCE_REPO_KEY = "synatra.source.repo_id"
SOURCE_REVISION_KEY = "synatra.source.revision"

# Synatra V0.1 `[\INST]` (the trained-in typo), v0.2 Mistral `[/INST]`, v0.3 ChatML, or the model's own Jinja.
PROMPT_FORMATS = ("synatra-v0.1", "synatra-v0.2", "chatml", "jinja")
VERSION_FORMATS = {"0.1": "synatra-v0.1", "0.2": "synatra-v0.2", "0.3": "chatml"}
# When nothing names a format: Mistral's own [INST] format, which Synatra v0.2 uses unchanged.
FALLBACK_FORMAT = "synatra-v0.2"
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")

# The rules, in the order they are tried; `override` is the user's --template.
RULES = ("override", "recorded", "chat_template", "name", "vocabulary", "fallback")

# V0.1's backslash INST; inside a Jinja string literal the backslash may be written escaped ('[\\INST]').
_V01_MARKER = re.compile(r"\[\\+INST\]")
# A Synatra version in a name: `Synatra-V0.1-7B-Instruct`, `synatra-7b-v0.3-dpo.Q4_K_M`, `Synatra 7B v0.3`.
_VERSION = re.compile(r"(?<![a-z0-9])v\s?0[._]([123])(?![0-9])", re.IGNORECASE)


def detect_prompt_format(chat_template: str | None) -> str | None:
    """Name the Synatra prompt format a Jinja chat template looks like (its markers only, not a proof)."""
    if not chat_template:
        return None
    if _V01_MARKER.search(chat_template):
        return "synatra-v0.1"
    if "[/INST]" in chat_template:
        return "synatra-v0.2"
    if "<|im_start|>" in chat_template:
        return "chatml"
    return None


def synatra_version_format(name: str | None) -> str | None:
    """The format of the Synatra version a name gives (`synatra` and `v0.1`/`v0.2`/`v0.3` both in it), if any."""
    if not name or "synatra" not in name.lower():
        return None
    version = _VERSION.search(name)
    return VERSION_FORMATS[f"0.{version.group(1)}"] if version else None


@dataclass(frozen=True)
class FormatDecision:
    """Which prompt format a GGUF gets, the rule that decided it, why, and anything the user should be told."""

    format: str
    rule: str
    reason: str
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.format} ({self.rule}: {self.reason})"


def name_sources(values: dict[str, object], file_name: str) -> list[tuple[str, str]]:
    """The names a GGUF gives itself, in the order the name rule reads them."""
    text = {k: v for k, v in values.items() if isinstance(v, str) and v}
    sources = [("general.name", text["general.name"])] if "general.name" in text else []
    if "general.basename" in text:
        basename = text["general.basename"]
        version = text.get("general.version")
        sources.append(("general.basename", f"{basename} {version}" if version else basename))
    sources += sorted((k, v) for k, v in text.items() if k.startswith("general.source."))
    sources.append(("file name", file_name))
    return sources


def decide_prompt_format(
    *,
    recorded: str | None,
    chat_template: str | None,
    names: Sequence[tuple[str, str]],
    special_tokens: Collection[str],
) -> FormatDecision:
    """Apply the rules in order: recorded format, the GGUF's own chat template, its names, its vocabulary, fallback.

    Metadata may only name a known format: anything else in `synatra.prompt_format` (a path, say) is ignored with
    a warning and never read. A `jinja` decision means the GGUF's own template; the runtime then checks whether a
    built-in renderer renders it identically.
    """
    warnings: list[str] = []
    if recorded is not None:
        if recorded not in PROMPT_FORMATS:
            warnings.append(
                f"ignoring {PROMPT_FORMAT_KEY} = {recorded[:80]!r}: not a known format "
                f"({', '.join(PROMPT_FORMATS)}); metadata may not name a file"
            )
        elif recorded != "jinja":
            return FormatDecision(recorded, "recorded", f"{PROMPT_FORMAT_KEY} = {recorded}", tuple(warnings))
        elif chat_template:
            return FormatDecision("jinja", "recorded", f"{PROMPT_FORMAT_KEY} = jinja: its own chat template")
        else:
            warnings.append(f"ignoring {PROMPT_FORMAT_KEY} = jinja: the file has no tokenizer.chat_template")
    if chat_template:
        return FormatDecision("jinja", "chat_template", "its own tokenizer.chat_template", tuple(warnings))
    for key, value in names:
        fmt = synatra_version_format(value)
        if fmt is not None:
            return FormatDecision(fmt, "name", f"{key} {value!r} names Synatra {_version_of(fmt)}", tuple(warnings))
    if all(token in special_tokens for token in CHATML_TOKENS):
        return FormatDecision("chatml", "vocabulary", "<|im_start|> and <|im_end|> are tokens", tuple(warnings))
    warnings.append(
        "no prompt format recorded, no chat template, no Synatra version in its names and no ChatML tokens: "
        f"using Mistral's [INST] format ({FALLBACK_FORMAT}); choose another with --template "
        "synatra-v0.1, synatra-v0.2 or chatml"
    )
    return FormatDecision(FALLBACK_FORMAT, "fallback", "nothing in the file names a format", tuple(warnings))


def _version_of(fmt: str) -> str:
    return next(f"v{version}" for version, name in VERSION_FORMATS.items() if name == fmt)
