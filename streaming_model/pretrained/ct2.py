"""A reader for CTranslate2's ``model.bin`` (numpy only).

Format (CTranslate2 ``python/ctranslate2/specs/model_spec.py``, ``ModelSpec._serialize``; binary version 6),
all integers little-endian::

    u32 binary_version
    str spec_name                # a string is: u16 length (including the NUL), the bytes, a NUL
    u32 spec_revision
    u32 num_variables
    num_variables x { str name; u8 rank; u32 dims[rank]; u8 dtype; u32 num_bytes; bytes data }
    u32 num_aliases
    num_aliases x { str alias; str variable_name }

dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED_BINARY_VERSIONS = (5, 6)
_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands (names the offset and the reason)."""


@dataclass(frozen=True, slots=True)
class Ct2Model:
    """The variables of a CTranslate2 model: name -> array (bfloat16 arrives as float32)."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        """A variable by name or alias. Raises KeyError naming what exists under the same scope."""
        key = self.aliases.get(name, name)
        if key not in self.variables:
            scope = name.rsplit("/", 1)[0]
            near = sorted(k for k in self.variables if k.startswith(scope))[:8]
            raise KeyError(f"no variable {name!r} in the {self.spec} model; under {scope!r}: {near}")
        return self.variables[key]


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.offset + n > len(self.data):
            raise Ct2FormatError(f"truncated at byte {self.offset}: {what} needs {n} bytes, "
                                 f"{len(self.data) - self.offset} left")
        out = self.data[self.offset:self.offset + n]
        self.offset += n
        return out

    def unpack(self, fmt: str, what: str) -> int:
        value: int = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]
        return value

    def string(self, what: str) -> str:
        n = self.unpack("H", what)
        raw = self.take(n, what)
        if n == 0 or raw[-1] != 0:
            raise Ct2FormatError(f"{what} at byte {self.offset - n} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Ct2FormatError(f"{what} at byte {self.offset - n} is not UTF-8") from exc


def parse_ct2(data: bytes) -> Ct2Model:
    """Parse the bytes of a ``model.bin``."""
    cur = _Cursor(data)
    version = cur.unpack("I", "binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise Ct2FormatError(f"binary version {version} is not one of {SUPPORTED_BINARY_VERSIONS}")
    spec = cur.string("spec name")
    revision = cur.unpack("I", "spec revision")
    count = cur.unpack("I", "variable count")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = cur.string("variable name")
        rank = cur.unpack("B", f"rank of {name}")
        shape = tuple(cur.unpack("I", f"shape of {name}") for _ in range(rank))
        type_id = cur.unpack("B", f"dtype of {name}")
        if type_id >= len(_DTYPES):
            raise Ct2FormatError(f"variable {name}: unknown dtype id {type_id}")
        dtype = _DTYPES[type_id]
        num_bytes = cur.unpack("I", f"size of {name}")
        raw = cur.take(num_bytes, f"data of {name}")
        variables[name] = _to_array(raw, dtype, shape, name)
    aliases: dict[str, str] = {}
    if cur.offset < len(data):
        for _ in range(cur.unpack("I", "alias count")):
            alias = cur.string("alias")
            aliases[alias] = cur.string("aliased variable")
    if cur.offset != len(data):
        raise Ct2FormatError(f"{len(data) - cur.offset} trailing bytes after the aliases")
    return Ct2Model(spec=spec, revision=revision, binary_version=version, variables=variables, aliases=aliases)


def _to_array(raw: bytes, dtype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 (bf16 is the top half of an f32)
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        array = halves.view(np.float32)
    else:
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise Ct2FormatError(f"variable {name}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def read_ct2(path: str | Path) -> Ct2Model:
    """Read ``model.bin`` (or a folder containing it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.bin"
    return parse_ct2(p.read_bytes())
