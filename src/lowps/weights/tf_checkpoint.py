"""Read TensorFlow V2 checkpoints (``model.ckpt-N.index`` + ``.data-0000K-of-0000N``) without TensorFlow.

The paper's checkpoints (Kumar et al. 2022, ``gs://gresearch/perceptual_similarity``) are TF
"tensor bundles". Their format, as TensorFlow writes it (tensorflow/core/util/tensor_bundle):

* ``PREFIX.index`` is an immutable sorted table (LevelDB's SSTable layout): data blocks of
  prefix-compressed ``key -> value`` entries with a restart array, an index block pointing at the
  data blocks, and a 48-byte footer (two block handles, padding, the magic number). Every block is
  followed by a compression byte and the masked CRC32C of block + byte.
* The entry under the empty key is a ``BundleHeaderProto`` (number of shards, endianness); every
  other key is a variable name whose value is a ``BundleEntryProto``: dtype, shape, shard id,
  offset and size within that shard, and the masked CRC32C of the tensor's bytes.
* ``PREFIX.data-0000K-of-0000N`` holds the raw little-endian tensor bytes.

The two protobuf messages are decoded by hand (a dozen fields); the CRCs are checked with
``google-crc32c``. Anything malformed or unsupported is a `WeightsError` naming the file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import WeightsError

__all__ = ["TFCheckpoint", "TensorInfo", "read_tf_checkpoint"]

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType -> torch dtype (the numeric ones)
_DTYPES: dict[int, tuple[str, torch.dtype]] = {
    1: ("float32", torch.float32), 2: ("float64", torch.float64), 3: ("int32", torch.int32),
    4: ("uint8", torch.uint8), 5: ("int16", torch.int16), 6: ("int8", torch.int8), 8: ("complex64", torch.complex64),
    9: ("int64", torch.int64), 10: ("bool", torch.bool), 14: ("bfloat16", torch.bfloat16),
    17: ("uint16", torch.uint16), 18: ("complex128", torch.complex128), 19: ("float16", torch.float16),
    22: ("uint32", torch.uint32), 23: ("uint64", torch.uint64),
}
_DTYPE_NAMES = {7: "string", 20: "resource", 21: "variant", 11: "qint8", 12: "quint8", 13: "qint32",
                15: "qint16", 16: "quint16"}


def _crc32c(data: bytes | memoryview) -> int:
    import google_crc32c

    return int(google_crc32c.value(bytes(data)))


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WeightsError(f"{where}: truncated or malformed varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, where: str) -> list[tuple[int, int, int | bytes]]:
    """A protobuf message's (field number, wire type, value) triples; values of length-delimited
    fields are their bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        num, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise WeightsError(f"{where}: truncated protobuf")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            if pos + n > len(buf):
                raise WeightsError(f"{where}: truncated protobuf")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise WeightsError(f"{where}: truncated protobuf")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise WeightsError(f"{where}: unsupported protobuf wire type {wire}")
        out.append((num, wire, value))
    return out


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class TensorInfo:
    """One variable of a checkpoint: what ``BundleEntryProto`` says about it."""

    name: str
    dtype: str  # numpy-style name ("float32", "bfloat16", ...)
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None  # unmasked; None when the writer stored none


def _parse_shape(buf: bytes, where: str) -> tuple[int, ...]:
    dims: list[int] = []
    for num, _, value in _fields(buf, where):
        if num == 2 and isinstance(value, bytes):  # Dim {int64 size = 1; string name = 2}
            size = 0
            for n2, _, v2 in _fields(value, where):
                if n2 == 1 and isinstance(v2, int):
                    size = _signed64(v2)
            if size < 0:
                raise WeightsError(f"{where}: a dimension of unknown size ({size})")
            dims.append(size)
        elif num == 3 and value:
            raise WeightsError(f"{where}: a tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes, where: str) -> TensorInfo:
    dtype = shard = offset = size = 0
    shape: tuple[int, ...] = ()
    crc: int | None = None
    for num, _, value in _fields(buf, f"{where} entry {name!r}"):
        if num == 1 and isinstance(value, int):
            dtype = value
        elif num == 2 and isinstance(value, bytes):
            shape = _parse_shape(value, f"{where} entry {name!r}")
        elif num == 3 and isinstance(value, int):
            shard = value
        elif num == 4 and isinstance(value, int):
            offset = _signed64(value)
        elif num == 5 and isinstance(value, int):
            size = _signed64(value)
        elif num == 6 and isinstance(value, int):
            crc = _unmask(value)
        elif num == 7:
            raise WeightsError(f"{where}: {name!r} is a partitioned variable (tensor slices), which lowps does not "
                               "read; re-save the checkpoint unpartitioned")
    if dtype in _DTYPES:
        dname = _DTYPES[dtype][0]
    else:
        dname = _DTYPE_NAMES.get(dtype, f"DataType {dtype}")
    if offset < 0 or size < 0:
        raise WeightsError(f"{where}: entry {name!r} has a negative offset or size")
    return TensorInfo(name, dname, shape, shard, offset, size, crc)


def _read_block(data: bytes, offset: int, size: int, where: str) -> bytes:
    end = offset + size
    if offset < 0 or end + 5 > len(data):
        raise WeightsError(f"{where}: a block handle points past the end of the file (truncated?)")
    block, kind = data[offset:end], data[end]
    (masked,) = struct.unpack_from("<I", data, end + 1)
    if _crc32c(data[offset:end + 1]) != _unmask(masked):
        raise WeightsError(f"{where}: block at byte {offset} fails its CRC32C check (the file is corrupt)")
    if kind != 0:
        raise WeightsError(f"{where}: block at byte {offset} is compressed (type {kind}); TensorFlow writes "
                           "checkpoint indexes uncompressed, so this file is not one lowps can read")
    return block


def _block_entries(block: bytes, where: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise WeightsError(f"{where}: a block too short for its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise WeightsError(f"{where}: a block's restart array does not fit the block")
    entries: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, where)
        non_shared, pos = _varint(block, pos, where)
        value_len, pos = _varint(block, pos, where)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise WeightsError(f"{where}: a malformed block entry")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def _decode_handle(buf: bytes, pos: int, where: str) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, where)
    size, pos = _varint(buf, pos, where)
    return offset, size, pos


class TFCheckpoint:
    """A TensorFlow V2 checkpoint read with the standard library, numpy and torch.

    ``TFCheckpoint("dir/model.ckpt-1000")`` (the prefix; a path ending in ``.index`` or
    ``.data-*`` is accepted too). ``.tensors`` maps names to `TensorInfo`; ``get_tensor(name)``
    reads one tensor (CRC32C verified) as a torch tensor; ``.data_files`` lists the shard files.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        p = os.fspath(prefix)
        for suffix in (".index",):
            if p.endswith(suffix):
                p = p[: -len(suffix)]
        if ".data-" in Path(p).name:
            p = p[: p.rindex(".data-")]
        self.prefix = p
        index = Path(p + ".index")
        if not index.is_file():
            raise WeightsError(f"cannot read TensorFlow checkpoint {p!r}: {index.name} is missing (pass the prefix, "
                               "e.g. .../model.ckpt-1000, whose .index and .data-* files sit beside it)")
        where = str(index)
        data = index.read_bytes()
        if len(data) < _FOOTER:
            raise WeightsError(f"{where}: {len(data)} bytes, too short for a checkpoint index (truncated?)")
        (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
        if magic != _MAGIC:
            raise WeightsError(f"{where}: not a TensorFlow checkpoint index (wrong magic number; truncated, or "
                               "another format such as a V1 checkpoint)")
        footer = data[len(data) - _FOOTER:]
        _, _, pos = _decode_handle(footer, 0, where)  # metaindex: unused by bundles
        idx_off, idx_size, _ = _decode_handle(footer, pos, where)
        self.tensors: dict[str, TensorInfo] = {}
        self.num_shards = 1
        header_seen = False
        for _, handle in _block_entries(_read_block(data, idx_off, idx_size, where), where):
            off, size, _ = _decode_handle(handle, 0, where)
            for key, value in _block_entries(_read_block(data, off, size, where), where):
                if key == b"":
                    header_seen = True
                    for num, _, v in _fields(value, f"{where} header"):
                        if num == 1 and isinstance(v, int):
                            self.num_shards = v
                        elif num == 2 and v == 1:
                            raise WeightsError(f"{where}: a big-endian checkpoint, which lowps does not read")
                    continue
                name = key.decode("utf-8", errors="replace")
                self.tensors[name] = _parse_entry(name, value, where)
        if not header_seen:
            raise WeightsError(f"{where}: no bundle header (not a TensorFlow V2 checkpoint index)")
        if self.num_shards < 1:
            raise WeightsError(f"{where}: the header names {self.num_shards} data shards")
        self.data_files = [Path(f"{p}.data-{k:05d}-of-{self.num_shards:05d}") for k in range(self.num_shards)]
        self._shards: dict[int, bytes] = {}

    def _shard(self, k: int) -> bytes:
        if k not in self._shards:
            if not 0 <= k < self.num_shards:
                raise WeightsError(f"{self.prefix}: an entry points at shard {k} of {self.num_shards}")
            f = self.data_files[k]
            if not f.is_file():
                raise WeightsError(f"{self.prefix}: data shard {f.name} is missing")
            self._shards[k] = f.read_bytes()
        return self._shards[k]

    def get_tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (a torch tensor of its TF dtype), its CRC32C checked against the index."""
        if name not in self.tensors:
            raise KeyError(f"{name!r} is not in checkpoint {self.prefix} ({len(self.tensors)} variables)")
        info = self.tensors[name]
        if info.dtype not in {v[0] for v in _DTYPES.values()}:
            raise WeightsError(f"{self.prefix}: {name!r} has dtype {info.dtype}, which lowps does not read")
        dtype = next(d for n, d in _DTYPES.values() if n == info.dtype)
        shard = self._shard(info.shard)
        if info.offset + info.size > len(shard):
            raise WeightsError(f"{self.prefix}: {name!r} lies past the end of {self.data_files[info.shard].name} "
                               "(truncated?)")
        raw = shard[info.offset:info.offset + info.size]
        if info.crc32c is not None and _crc32c(raw) != info.crc32c:
            raise WeightsError(f"{self.prefix}: {name!r} fails its CRC32C check (the data file is corrupt)")
        count = int(np.prod(info.shape, dtype=np.int64))
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != count * itemsize:
            raise WeightsError(f"{self.prefix}: {name!r} holds {len(raw)} bytes for shape {info.shape} of "
                               f"{info.dtype} ({count * itemsize} expected)")
        if count == 0:
            return torch.empty(info.shape, dtype=dtype)
        return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(info.shape)

    def variables(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}``, as ``tf.train.load_checkpoint(...).get_variable_to_shape_map()``."""
        return {k: v.shape for k, v in self.tensors.items()}


def read_tf_checkpoint(prefix: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Every (or the named) numeric tensor of a TF V2 checkpoint, read without TensorFlow."""
    ckpt = TFCheckpoint(prefix)
    keys = names if names is not None else [k for k, v in ckpt.tensors.items()
                                            if v.dtype in {d[0] for d in _DTYPES.values()}]
    return {k: ckpt.get_tensor(k) for k in keys}
