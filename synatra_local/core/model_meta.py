"""GGUF metadata keys of our own, shared by the converter (which writes them) and the runtime (which reads them)."""

from __future__ import annotations

import re

PROMPT_FORMAT_KEY = "synatra.prompt_format"
SOURCE_REPO_KEY = "synatra.source.repo_id"
SOURCE_REVISION_KEY = "synatra.source.revision"

# Synatra V0.1 `[\INST]` (the trained-in typo), v0.2 Mistral `[/INST]`, v0.3 ChatML, or the model's own Jinja.
PROMPT_FORMATS = ("synatra-v0.1", "synatra-v0.2", "chatml", "jinja")

# V0.1's backslash INST; inside a Jinja string literal the backslash may be written escaped ('[\\INST]').
_V01_MARKER = re.compile(r"\[\\+INST\]")


def detect_prompt_format(chat_template: str | None) -> str | None:
    """Name the Synatra prompt format a Jinja chat template produces, if it is one of ours."""
    if not chat_template:
        return None
    if _V01_MARKER.search(chat_template):
        return "synatra-v0.1"
    if "[/INST]" in chat_template:
        return "synatra-v0.2"
    if "<|im_start|>" in chat_template:
        return "chatml"
    return None
