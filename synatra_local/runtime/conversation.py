"""A conversation with history, for the `chat` REPL and for embedders: send, stream, reset, save, load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
        data = {"system": self.system, "messages": self.messages}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        return Path(path)

    def load(self, path: Path) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in data["messages"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SynatraError(
                f"cannot load a conversation from {path} ({exc})", fix="pass a file made by /save"
            ) from exc
        self.system = data.get("system")
        self.messages = messages  # type: ignore[assignment]

    def _with_system(self, messages: list[Message]) -> list[Message]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages
