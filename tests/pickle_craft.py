"""Hand-written pickles and rank files rewritten around them, for the hostile-input tests.

torch.save cannot write a damaged or hostile pickle, so these are assembled from opcodes
(protocol 2, as torch writes): `call(GLOBAL, args)` is a REDUCE, `pid(...)` a BINPERSID.
"""

from __future__ import annotations

import pickle
import pickletools
import struct
import zipfile
from pathlib import Path


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def num(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    data = pickle.encode_long(value)
    return b"\x8a" + bytes([len(data)]) + data if len(data) < 256 else (
        b"\x8b" + struct.pack("<I", len(data)) + data)


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(fn: bytes, args: bytes) -> bytes:
    return fn + args + b"R"


def pid(*items: bytes) -> bytes:
    return tup(*items) + b"Q"


def storage(key: str = "0", n_elements: int = 16, cls: str = "FloatStorage") -> bytes:
    return pid(text("storage"), glob("torch", cls), text(key), text("cpu"), num(n_elements))


def tensor_v2(store: bytes | None = None, offset: bytes | None = None,
              shape: bytes | None = None, stride: bytes | None = None) -> bytes:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), tup(
        store if store is not None else storage(),
        offset if offset is not None else num(0),
        shape if shape is not None else tup(num(4), num(4)),
        stride if stride is not None else tup(num(4), num(1)),
        b"\x89", call(glob("collections", "OrderedDict"), b")")))


def state(*items: tuple[str, bytes]) -> bytes:
    """A protocol-2 pickle of a dict name -> object."""
    body = b"".join(text(name) + value for name, value in items)
    return b"\x80\x02}(" + body + b"u."


def replace_data_pkl(path: Path, data_pkl: bytes) -> None:
    """Rewrite a torch zip file with another data.pkl, every other member kept (stored)."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data_pkl if name.endswith("/data.pkl") else data)


def read_data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return archive.read(name)


def offset_operand(data_pkl: bytes, meta_name: str) -> tuple[int, int]:
    """(position, length) of the storage-offset operand of tensor `meta_name`: the opcode
    right after the first BINPERSID that follows the name."""
    ops = list(pickletools.genops(data_pkl))
    start = next(i for i, (op, arg, _) in enumerate(ops) if arg == meta_name)
    persid = next(i for i in range(start, len(ops)) if ops[i][0].name == "BINPERSID")
    pos, end = ops[persid + 1][2], ops[persid + 2][2]
    assert pos is not None and end is not None
    return pos, end - pos
