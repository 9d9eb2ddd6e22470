"""Token-by-token text for streaming, without broken characters.

Korean text often falls back to byte tokens (``<0xEA>`` ``<0xB0>`` ``<0x80>`` is one Hangul syllable), so
decoding each token on its own would show U+FFFD. Bytes go through an incremental UTF-8 decoder instead and
only whole characters come out. Modelled on mlx-lm's SPM streaming detokenizer.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable


class StreamingDetokenizer:
    """Turns a stream of token ids into newly complete text, as sentencepiece would decode the whole stream.

    ``token_bytes`` gives the raw bytes of one token's piece (``▁`` as b" ", a byte-fallback token as its
    single byte, control tokens as b""). sentencepiece drops the dummy-prefix space of the first piece when
    decoding; ``strip_leading_space`` does the same for the first non-empty piece of the stream only.
    """

    def __init__(self, token_bytes: Callable[[int], bytes], strip_leading_space: bool = True) -> None:
        self._token_bytes = token_bytes
        self._strip_leading_space = strip_leading_space
        self.reset()

    def reset(self) -> None:
        """Start a new stream: forget pending bytes and emitted text."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._started = False

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return self._text

    def add(self, token_id: int) -> str:
        """Feed one token; return only the characters it completed (possibly "")."""
        piece = self._token_bytes(token_id)
        if piece and not self._started:
            self._started = True
            if self._strip_leading_space and piece.startswith(b" "):
                piece = piece[1:]
        return self._emit(self._decoder.decode(piece))

    def flush(self) -> str:
        """End of stream: emit what is left; an incomplete UTF-8 tail becomes U+FFFD."""
        return self._emit(self._decoder.decode(b"", final=True))

    def _emit(self, chunk: str) -> str:
        self._text += chunk
        return chunk
