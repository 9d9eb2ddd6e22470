"""A conversation with history, for the `chat` REPL and for embedders: send, stream, reset, save, load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from synatra_local.core.atomic import atomic_output
from synatra_local.core.errors import SynatraError

from .engine import Engine, GenerationOptions, GenerationStats
from .templates import Message


@dataclass
class Conversation:
    """Messages so far plus an optional system prompt; each `send` streams one reply and records it.

    When the context would overflow, the oldest turns are dropped (the system prompt stays) and
    `last_stats.dropped_turns` says how many.
    """

    engine: Engine
    system: str | None = None
    options: GenerationOptions = field(default_factory=GenerationOptions)
    messages: list[Message] = field(default_factory=list)
    last_stats: GenerationStats | None = None

    def send(self, text: str) -> Iterator[str]:
        """Stream the reply to `text`; an interrupted reply is kept as far as it got."""
        request = self._with_system(self.messages + [{"role": "user", "content": text}])
        generation = self.engine.stream(request, self.options, trim_history=True)
        self.last_stats = generation.stats
        try:
            yield from generation
        finally:
            generation.close()
            if generation.stats.stop_reason is not None:  # the reply started: record it, however far it got
                kept = self.messages[2 * generation.stats.dropped_turns :]
                self.messages = kept + [
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": generation.text},
                ]

    def reset(self) -> None:
        self.messages = []

    def save(self, path: Path) -> Path:
        """Write the conversation as JSON (whole or not at all); a path that cannot be written is a SynatraError."""
        data = {"system": self.system, "messages": self.messages}
        text = json.dumps(data, ensure_ascii=False, indent=2)
        try:
            with atomic_output(Path(path), force=True) as partial:
                partial.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise SynatraError(
                f"cannot save the conversation to {path}: {exc.strerror or exc}",
                fix="choose a file in a folder you can write to",
            ) from exc
        return Path(path)

    def load(self, path: Path) -> None:
        """Replace the conversation with one from `save`; a file that is not one leaves this one as it was."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            system, messages = _checked_history(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise SynatraError(
                f"cannot load a conversation from {path}: {reason}", fix="pass a file made by /save"
            ) from exc
        self.system = system
        self.messages = messages

    def _with_system(self, messages: list[Message]) -> list[Message]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages


def _checked_history(data: object) -> tuple[str | None, list[Message]]:
    """A saved conversation's system prompt and messages: text, user and assistant turns taking turns."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError('not a saved conversation (no "messages" list)')
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("the system prompt is not text")
    messages: list[Message] = []
    for index, message in enumerate(data["messages"]):
        expected = "user" if index % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != expected:
            role = message.get("role") if isinstance(message, dict) else message
            raise ValueError(f"message {index} has role {role!r}; {expected!r} was expected (user and assistant "
                             "take turns)")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {index} has no text content")
        messages.append({"role": expected, "content": message["content"]})
    return system, messages
