"""Meta's rank files, opened lazily: tensor references (name, dtype, shape, byte offset), no data.

Each file is opened once with ``torch.load(mmap=True, weights_only=True)``: the restricted
unpickler refuses anything that is not plain tensors (a .pth is a pickle, and a plain load runs
arbitrary code), and mmap means no tensor byte is read. From that state dict we keep only names,
dtypes, shapes and each tensor's byte offset in the file, then drop it, which unmaps the file.
Jobs later read exactly the bytes they need with positioned reads into buffers they own. That way
no mapped checkpoint page is ever resident, peak RSS is the buffers we allocate, and nothing has
to be released page by page (which macOS and Windows would make hard).

Where a tensor's bytes sit in the file: torch's zip archives store every storage uncompressed as
a member ``<archive>/data/<key>`` (the archive folder is named after the file the checkpoint was
first saved as, so it is matched, never assumed). An mmap-loaded storage is the file mapping
sliced at that member's offset, so its address minus the member's data offset is the same for all
storages. We find that constant and check it against every storage's size before trusting it.
"""

from __future__ import annotations

import codecs
import io
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamconv.errors import CheckpointError
from streamconv.source.rank_files import find_rank_paths, find_scale_paths

_DATA_MEMBER_RE = re.compile(r"^[^/]+/data/\d+$")
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, skipped fields, name length, extra length



@dataclass(frozen=True)
class TensorRef:
    """Where one shard's tensor lives on disk; no data."""

    rank_idx: int
    meta_name: str
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset_bytes: int

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n * self.itemsize


@dataclass(frozen=True)
class Checkpoint:
    input_dir: Path
    rank_paths: tuple[Path, ...]
    tensors: tuple[dict[str, TensorRef], ...]  # one dict per shard, keyed by meta_name
    # Meta's FP8 release (405B): fp8_scales_N.pt per rank, indexed like the shards; the refs'
    # rank_idx is n_ranks + rank, their index in read_paths. Empty for every other release.
    scale_paths: tuple[Path, ...] = ()
    scales: tuple[dict[str, TensorRef], ...] = ()

    @property
    def n_ranks(self) -> int:
        return len(self.rank_paths)

    @property
    def read_paths(self) -> tuple[Path, ...]:
        """Every file a job reads from, in the order RankReader indexes them."""
        return self.rank_paths + self.scale_paths


# Single-file Meta-format checkpoints under other names (docs/releases.md): llama-stack's
# consolidated.pth, torchtune's Meta checkpointer output (meta_model_N.pt, N the epoch, and
# since late 2024 model-00001-of-00001.bin). All hold one rank with Meta's tensor names.


def _data_member_offsets(path: Path) -> dict[int, int]:
    """File offset of each stored data member -> its size, from the zip's own directory."""
    offsets: dict[int, int] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not _DATA_MEMBER_RE.match(info.filename):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path} stores {info.filename} compressed, which torch "
                                      "never does; the file was re-packed: download it again")
            raw.seek(info.header_offset)
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
            if signature != b"PK\x03\x04":
                raise CheckpointError(f"{path} is corrupt (bad zip entry for {info.filename}); "
                                      "download it again")
            data_offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            offsets[data_offset] = info.file_size
    return offsets


def _storage_base(path: Path, storages: dict[int, int], members: dict[int, int]) -> int:
    """The constant (storage address - member offset), checked against every storage."""
    ptrs = sorted(storages)
    for member_offset in sorted(members):
        base = ptrs[0] - member_offset
        if all(members.get(ptr - base) == size for ptr, size in storages.items()):
            return base
    raise CheckpointError(f"cannot locate the tensor data inside {path}: its zip layout is not "
                          "one torch writes; re-save it with torch.save or download it again")


def _not_zip_error(path: Path) -> CheckpointError:
    """Say which of the usual reasons it is: legacy format, truncated download, or junk."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":  # a pickle protocol marker: torch.save before torch 1.6
        return CheckpointError(f"{path} uses the legacy (pre-zip) torch.save format, which cannot "
                               "be read lazily; re-save it with a current torch, or download "
                               "Meta's file again")
    if head == b"PK\x03\x04":
        return CheckpointError(f"{path} is truncated (its zip directory is missing); download "
                               "it again")
    return CheckpointError(f"{path} is corrupt or not a torch checkpoint at all (unrecognised "
                           "content); download it again")


def _refusal_reason(error: Exception) -> str:
    """torch names what the pickle asked for on a `GLOBAL module.name` line; quote only that."""
    match = re.search(r"GLOBAL (\S+)", str(error))
    return f"it calls {match.group(1)}" if match else "it holds objects other than tensors"


# What unpickling an io.BytesIO needs (llama-models' llama4/generation.py allows the same two
# before loading its Llama 4 checkpoints): the class, and codecs.encode for its bytes.
_EXTRA_STATE_GLOBALS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    io.BytesIO, codecs.encode]


def _load_metadata(path: Path) -> dict[str, torch.Tensor]:
    if not zipfile.is_zipfile(path):
        raise _not_zip_error(path)
    try:
        with torch.serialization.safe_globals(_EXTRA_STATE_GLOBALS):
            state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} was refused for safety and nothing in it ran: "
                              f"{_refusal_reason(e)}, which a file of plain tensors never does; "
                              "use Meta's original file") from e
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is corrupt (its zip archive cannot be read); download it "
                              "again") from e
    if isinstance(state, dict):
        # Llama 4 files carry `_extra_state` entries (serialized io.BytesIO) beside the
        # tensors; Meta's loader and transformers' converter drop them, and so does this.
        state = {k: v for k, v in state.items()
                 if not (isinstance(k, str) and k.endswith("._extra_state")
                         and isinstance(v, io.BytesIO))}
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a dict of named tensors; is it a Meta "
                              "LLaMA checkpoint?")
    return state


def open_rank_file(path: Path, rank_idx: int) -> dict[str, TensorRef]:
    """Tensor references of one file; the file mapping is released before returning."""
    state = _load_metadata(path)
    storages: dict[int, int] = {}
    for tensor in state.values():
        storage = tensor.untyped_storage()
        if storage.nbytes() > 0:
            storages[storage.data_ptr()] = storage.nbytes()
    members = _data_member_offsets(path)
    base = _storage_base(path, storages, members) if storages else 0
    refs: dict[str, TensorRef] = {}
    for meta_name, tensor in state.items():
        if not tensor.is_contiguous():
            raise CheckpointError(f"tensor {meta_name} in {path} is not stored contiguously, "
                                  "which Meta's files never do; use Meta's original file")
        offset = (tensor.untyped_storage().data_ptr() - base
                  + int(tensor.storage_offset()) * tensor.element_size())
        refs[meta_name] = TensorRef(rank_idx, meta_name, path, tensor.dtype,
                                    tuple(tensor.shape), offset)
    del state
    return refs


def open_checkpoint(input_dir: Path) -> Checkpoint:
    paths = find_rank_paths(input_dir)
    tensors = tuple(open_rank_file(path, idx) for idx, path in enumerate(paths))
    scale_paths = find_scale_paths(input_dir, len(paths))
    scales = tuple(open_rank_file(path, len(paths) + rank) for rank, path in enumerate(scale_paths))
    return Checkpoint(input_dir, tuple(paths), tensors, tuple(scale_paths), scales)
