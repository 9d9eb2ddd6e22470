"""gguf-py's GGUF writer, packing long metadata arrays in one step instead of value by value.

gguf-py packs an array through one recursive call and one type check per element: for a 32,000-token vocabulary
(pieces, scores and types) that is ~0.3 s of `convert`'s run, all of it before the first tensor byte moves. The
bytes are the same (tests/test_gguf_writer.py compares them with gguf-py's own).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synatra_local.core.gguf_lib import gguf

_ValueType = gguf.GGUFValueType
_TEXT = {str, bytes, bytearray}


class GGUFWriter(gguf.GGUFWriter):
    """Packs lists of text (str, bytes), float or int values (one kind per list) in bulk; everything else as gguf-py."""

    def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
        packed = self._pack_array(val) if vtype == _ValueType.ARRAY and sub_type is None else None
        if packed is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (self._pack("I", vtype) if add_vtype else b"") + packed

    def _pack_array(self, values: Any) -> bytes | None:
        """The element type, count and elements of a uniform list, or None where gguf-py should pack it."""
        if self.endianess != gguf.GGUFEndian.LITTLE or not isinstance(values, list) or not values:
            return None
        kinds = {type(v) for v in values}
        if kinds <= _TEXT:  # gguf-py writes str, bytes and bytearray alike as GGUF strings
            encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
            value_type = _ValueType.STRING
            body = b"".join([part for e in encoded for part in (len(e).to_bytes(8, "little"), e)])
        elif kinds == {float}:
            with np.errstate(over="ignore"):
                array = np.asarray(values, np.float64).astype("<f4")
            if not np.isfinite(array).all():  # overflowed to inf, or was inf/nan: packed (or refused) as gguf-py does
                return None
            value_type, body = _ValueType.FLOAT32, array.tobytes()
        elif kinds == {int}:
            try:
                array = np.asarray(values, np.int64)
            except OverflowError:
                return None
            if array.min() < -(1 << 31) or array.max() >= 1 << 31:  # beyond int32: gguf-py's own error
                return None
            value_type, body = _ValueType.INT32, array.astype("<i4").tobytes()
        else:
            return None
        return self._pack("I", value_type) + self._pack("Q", len(values)) + body
