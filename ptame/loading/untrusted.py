"""Reading files that may come from anyone (a Hub repo, a downloaded folder), within bounds.

A JSON file is read only up to a size and a nesting depth, with no repeated keys and no NaN or
Infinity; a safetensors file's header is read and checked (tensor names, dtypes, shapes and byte
ranges that fit the file) without reading a tensor. Every failure is a ``CheckpointError`` that
names the file and the problem, in a message of bounded length.
"""

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ptame.errors import CheckpointError, describe

MAX_JSON_BYTES = 4 * 2**20  # a config.json: 100,000 class names of 40 characters fit
MAX_JSON_DEPTH = 16  # objects and lists inside each other
MAX_HEADER_BYTES = 16 * 2**20  # a safetensors header (names, dtypes, shapes, offsets): ~100,000 tensors
MAX_TENSORS = 100_000
MAX_RANK = 8
MAX_DIM = 2**31 - 1  # one side of a tensor (a zero-byte tensor may declare any shape: its sides are bounded too)
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}  # the safetensors dtypes ptame reads; any other is refused
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def _object_without_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    counts = Counter(key for key, _ in pairs)  # linear: a label table of 100,000 keys is read in milliseconds
    repeated = sorted(key for key, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"repeated keys {describe(repeated)}")
    return dict(pairs)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: object) -> int:
    """The nesting depth of a parsed JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(text: str | bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """A JSON document from an untrusted source.

    Raises:
        CheckpointError: not UTF-8 JSON, a repeated key, NaN or Infinity, or nested deeper than
            ``max_depth``; the message starts with ``where``.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_object_without_repeated_keys, parse_constant=_refuse_constant)
    except RecursionError as error:
        raise CheckpointError(f"{where} is nested too deeply to be read") from error
    except (UnicodeDecodeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{where} is not valid JSON: {error}") from error
    if _depth(value) > max_depth:
        raise CheckpointError(f"{where} is nested more than {max_depth} levels deep")
    return value


def read_bounded(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """A file's bytes, if it has at most ``max_bytes`` (never more is read).

    Raises:
        CheckpointError: unreadable, or larger than ``max_bytes``; names ``what`` and the path.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise CheckpointError(f"cannot read the {what} {path}: {error.strerror or error}") from error
    if len(data) > max_bytes:
        raise CheckpointError(f"the {what} {path} is larger than {max_bytes} bytes")
    return data


def read_json_object(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict[str, object]:
    """The JSON object of a file of at most ``max_bytes`` (see ``parse_json``).

    Raises:
        CheckpointError: unreadable, larger than ``max_bytes``, not valid JSON, or not an object.
    """
    value = parse_json(read_bounded(path, max_bytes, "config"), str(path))
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file, as its header declares it: dtype ("F32", ...) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """The number of elements."""
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        """Whether the dtype is a floating-point one."""
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file holds, read from its header alone: tensors by name, and its metadata."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def numel(self) -> int:
        """The number of elements of all its tensors."""
        return sum(info.numel for info in self.tensors.values())


def _unreadable(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted?): {problem}")


def _tensor_info(name: str, entry: object, data_bytes: int, path: Path) -> tuple[TensorInfo, int, int]:
    where = f"tensor {describe(name)}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _unreadable(path, f"{where} is not described by dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise _unreadable(path, f"{where} has the dtype {describe(dtype)}; ptame reads {', '.join(DTYPE_BYTES)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK) or not all(
        isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_DIM for size in shape
    ):
        raise _unreadable(
            path, f"{where} has the shape {describe(shape)}: not a list of at most {MAX_RANK} sizes of 0 to {MAX_DIM:,}"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2) or not all(
        isinstance(offset, int) and not isinstance(offset, bool) for offset in offsets
    ):
        raise _unreadable(path, f"{where} has the data_offsets {describe(offsets)}: not [begin, end]")
    begin, end = offsets
    info = TensorInfo(dtype, tuple(shape))
    if not 0 <= begin <= end <= data_bytes or end - begin != info.numel * DTYPE_BYTES[dtype]:
        raise _unreadable(
            path,
            f"{where}: its bytes [{begin}, {end}) do not hold a {dtype} tensor of shape {info.shape} "
            f"inside the file's {data_bytes} bytes of data",
        )
    return info, begin, end


def read_safetensors_header(path: Path, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """The header of a safetensors file, checked against the file's size; no tensor is read.

    Raises:
        CheckpointError: unreadable, too short, a header over ``max_header_bytes`` or not JSON,
            a dtype ptame does not read, or byte ranges that overlap or leave the file.
    """
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            prefix = handle.read(8)
            header_bytes = int.from_bytes(prefix, "little")
            if len(prefix) < 8 or header_bytes > size - 8:
                raise _unreadable(path, "the file is too short for its header")
            if header_bytes > max_header_bytes:
                raise _unreadable(path, f"a header of {header_bytes} bytes, over the {max_header_bytes} ptame reads")
            header = parse_json(handle.read(header_bytes), "its header", max_depth=3)
    except CheckpointError as error:
        raise _unreadable(path, str(error)) from error
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from error
    if not isinstance(header, dict):
        raise _unreadable(path, f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise _unreadable(path, "its metadata must map names to strings")
    if len(header) > MAX_TENSORS:
        raise _unreadable(path, f"{len(header)} tensors, over the {MAX_TENSORS} ptame reads")
    data_bytes = size - 8 - header_bytes
    tensors, ranges = {}, []
    for name, entry in header.items():
        tensors[name], begin, end = _tensor_info(name, entry, data_bytes, path)
        ranges.append((begin, end))
    ranges.sort()
    if any(end > next_begin for (_, end), (next_begin, _) in zip(ranges, ranges[1:])):
        raise _unreadable(path, "the byte ranges of its tensors overlap")
    return SafetensorsHeader(tensors, dict(metadata))
