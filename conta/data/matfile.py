"""A reader for MATLAB level-5 MAT files, enough for SBD's annotations, with NumPy alone.

SBD (benchmark.tgz) stores each image's masks as `cls/<id>.mat`: a struct `GTcls` whose field
`Segmentation` is the H x W uint8 class map. Reading them would otherwise need SciPy just for
this one step. The format (MathWorks, "MAT-File Format", level 5): a 128-byte header, then data
elements, each an 8-byte tag (type, byte count) or a 4-byte "small element" tag, with the data
padded to 8 bytes; a variable is a miMATRIX element (array flags, dimensions, name, contents),
usually zlib-compressed (miCOMPRESSED). Numeric arrays, char arrays, structs and cells are read;
sparse matrices and objects are skipped (returned as None). Nothing is ever unpickled or run.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from conta.errors import DataError

MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
             16: "u1", 17: "u2", 18: "u4"}        # 16-18: UTF-8/16/32 text, read as code units
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
FLAG_COMPLEX, FLAG_LOGICAL = 0x0800, 0x0200


class _Reader:
    """Data elements of one byte buffer, in one byte order."""

    def __init__(self, data: bytes, order: str, path: Path) -> None:
        self.data, self.order, self.path, self.pos = data, order, path, 0

    def fail(self, problem: str) -> DataError:
        return DataError(self.path, f"not a readable MAT-file (level 5): {problem}")

    def more(self) -> bool:
        return self.pos + 8 <= len(self.data)

    def element(self, pad: bool = True) -> tuple[int, bytes]:
        """(type, payload) of the next data element; `pad` skips the padding to 8 bytes."""
        if self.pos + 8 > len(self.data):
            raise self.fail("truncated element tag")
        first, second = np.frombuffer(self.data, self.order + "u4", 2, self.pos)
        if first >> 16:                                   # small element: both in 4 bytes
            kind, size, start, end = int(first & 0xFFFF), int(first >> 16), self.pos + 4, self.pos + 8
            if size > 4:
                raise self.fail("small element longer than 4 bytes")
            self.pos = end
            return kind, self.data[start: start + size]
        kind, size, start = int(first), int(second), self.pos + 8
        if start + size > len(self.data):
            raise self.fail("element runs past the end of the file")
        self.pos = start + (size + 7) // 8 * 8 if pad and kind != MI_COMPRESSED else start + size
        return kind, self.data[start: start + size]

    def numbers(self) -> np.ndarray:
        kind, payload = self.element()
        if kind not in MI_DTYPES:
            raise self.fail(f"unexpected data type {kind} inside an array")
        return np.frombuffer(payload, self.order + MI_DTYPES[kind])

    def variable(self) -> tuple[str, Any] | None:
        """The next top-level variable as (name, value), or None past the last one."""
        if not self.more():
            return None
        kind, payload = self.element()
        if kind == MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as exc:
                raise self.fail(f"compressed variable does not inflate ({exc})") from None
            inner = _Reader(payload, self.order, self.path)
            kind, payload = inner.element()
        if kind != MI_MATRIX:
            return "", None                               # some other top-level element: skipped
        return _Reader(payload, self.order, self.path).matrix()

    def matrix(self) -> tuple[str, Any]:
        """(name, value) of a miMATRIX payload positioned at its array flags."""
        if not self.data:
            return "", np.zeros((0, 0))                    # MATLAB writes empty arrays as empty elements
        flags = self.numbers()
        mx_class, bits = int(flags[0] & 0xFF), int(flags[0])
        dims = tuple(int(d) for d in self.numbers())
        name = self.numbers().tobytes().decode("ascii", "replace")
        if mx_class in MX_DTYPES:
            real = self.numbers().astype(MX_DTYPES[mx_class]).reshape(dims, order="F")
            if bits & FLAG_COMPLEX:
                real = real + 1j * self.numbers().reshape(dims, order="F")
            return name, real.astype(bool) if bits & FLAG_LOGICAL else real
        if mx_class == MX_CHAR:
            codes = self.numbers().reshape(dims, order="F")
            return name, "".join(chr(c) for c in codes.T.ravel())
        if mx_class == MX_CELL:
            return name, [self._child() for _ in range(int(np.prod(dims)))]
        if mx_class == MX_STRUCT:
            width = int(self.numbers()[0])
            raw = self.numbers().tobytes()
            fields = [raw[i: i + width].split(b"\0", 1)[0].decode("ascii") for i in range(0, len(raw), width)]
            items = [{f: self._child() for f in fields} for _ in range(int(np.prod(dims)))]
            return name, items[0] if len(items) == 1 else items
        return name, None                                 # sparse, object, function handle: not needed

    def _child(self) -> Any:
        kind, payload = self.element()
        if kind != MI_MATRIX:
            raise self.fail(f"expected an array inside a struct or cell, got data type {kind}")
        return _Reader(payload, self.order, self.path).matrix()[1]


def load_mat(path: str | Path) -> dict[str, Any]:
    """Every variable of a level-5 MAT-file: numeric arrays as NumPy arrays (MATLAB's column-major
    layout undone), char arrays as str, 1 x 1 structs as dicts, other structs and cells as lists."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    if len(data) < 128:
        raise DataError(path, "not a readable MAT-file (level 5): shorter than its 128-byte header")
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None:
        raise DataError(path, "not a MAT-file (no endian indicator in its header)")
    if int(np.frombuffer(data, order + "u2", 1, 124)[0]) != 0x0100:
        raise DataError(path, "not a level-5 MAT-file (MATLAB 7.3 files are HDF5: save them with -v7)")
    reader = _Reader(data[128:], order, path)
    variables: dict[str, Any] = {}
    while (item := reader.variable()) is not None:
        name, value = item
        if name:
            variables[name] = value
    return variables
