"""Meta's rank files, opened lazily: tensor references (name, dtype, shape, byte offset), no data.

Each file's pickle is read once by a restricted unpickler that builds records instead of
tensors (pickle_index.py): it refuses anything that is not plain tensors (a .pth is a pickle, and
a plain load runs arbitrary code), and it neither reads nor maps a tensor byte, so a rank file
larger than the machine's memory (a 94 GiB Maverick rank) is indexed like a small one. We keep
only names, dtypes, shapes and each tensor's byte offset in the file. Jobs later read exactly
the bytes they need with positioned reads into buffers they own. That way no mapped checkpoint
page is ever resident, peak RSS is the buffers we allocate, and nothing has to be released page
by page (which macOS and Windows would make hard).

Where a tensor's bytes sit in the file: torch's zip archives store every storage uncompressed as
a member ``<archive>/data/<key>`` (the archive folder is named after the file the checkpoint was
first saved as, so it is read from the pickle's own member, never assumed); the pickle names
each tensor's storage key and its offset in it.
"""

from __future__ import annotations

import math
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from streamconv.errors import CheckpointError
from streamconv.source.pickle_index import (
    NotATensor,
    RecordsError,
    TensorRecord,
    read_records,
)
from streamconv.source.rank_files import find_rank_paths, find_scale_paths
from streamconv.system.dtypes import DType

_DATA_MEMBER_RE = re.compile(r"^[^/]+/data/\d+$")
# signature, version (skipped), flags, method, time and date (skipped), crc, compressed and
# uncompressed sizes, name length, extra length (PKWARE APPNOTE 4.3.7).
_LOCAL_HEADER = struct.Struct("<4s2xHH4xIIIHH")
_ZIP64_SIZE = 0xFFFFFFFF  # the size is in the zip64 extra field
# A data.pkl larger than this is not torch's (a 405B rank file's is ~200 KB).
_MAX_PICKLE_BYTES = 64 << 20



@dataclass(frozen=True)
class TensorRef:
    """Where one rank file's tensor lives on disk; no data."""

    rank_idx: int
    meta_name: str
    path: Path
    dtype: DType
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
    tensors: tuple[dict[str, TensorRef], ...]  # one dict per rank file, by meta_name
    # Meta's FP8 release (405B): fp8_scales_N.pt per rank, indexed like the rank files; the refs'
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


def _local_header(raw: IO[bytes], info: zipfile.ZipInfo) -> int:
    """The file offset of a member's bytes, from its local header, once the header agrees with
    the central directory: same name, stored, same sizes, a well-formed extra field. A flipped
    byte in a name or extra length would otherwise shift every read of the member."""
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        raise ValueError("short local header")
    signature, flags, method, _crc, packed, size, name_len, extra_len = _LOCAL_HEADER.unpack(
        header)
    name = raw.read(name_len)
    extra = raw.read(extra_len)
    central_name = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    sizes_deferred = flags & 0x08  # sizes in a data descriptor after the data
    if (signature != b"PK\x03\x04" or name != central_name or len(extra) != extra_len
            or method != zipfile.ZIP_STORED or not _well_formed_extra(extra)
            or not (sizes_deferred or {packed, size} <= {info.file_size, _ZIP64_SIZE})):
        raise ValueError(f"the local header of {info.filename} disagrees with the central "
                         "directory")
    return int(info.header_offset) + _LOCAL_HEADER.size + int(name_len) + int(extra_len)


def _well_formed_extra(extra: bytes) -> bool:
    """Extra fields are (id, size, data) records that fill the field exactly."""
    pos = 0
    while pos + 4 <= len(extra):
        pos += 4 + int.from_bytes(extra[pos + 2:pos + 4], "little")
    return pos == len(extra)


def _data_members(archive: zipfile.ZipFile, raw: IO[bytes], path: Path,
                  folder: str) -> dict[str, tuple[int, int]]:
    """Storage key -> (file offset of its bytes, size), from the zip's own directory."""
    members: dict[str, tuple[int, int]] = {}
    # Where each member's region ends: the next local header, or the central directory.
    starts = sorted({i.header_offset for i in archive.infolist()} | {archive.start_dir})
    for info in archive.infolist():
        if not (_DATA_MEMBER_RE.match(info.filename) and info.filename.startswith(folder)):
            continue
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path} stores {info.filename} compressed, which torch "
                                  "never does; the file was re-packed: download it again")
        try:
            data_offset = _local_header(raw, info)
        except ValueError as e:
            raise CheckpointError(f"{path} is corrupt (bad zip entry for {info.filename}); "
                                  "download it again") from e
        region_end = next((s for s in starts if s > info.header_offset), archive.start_dir)
        if data_offset + info.file_size > region_end:
            raise CheckpointError(f"{path} is corrupt (the bytes of {info.filename} overlap "
                                  "the next zip entry); download it again")
        members[info.filename.rsplit("/", 1)[1]] = (data_offset, info.file_size)
    return members


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


def _records_error(path: Path, error: RecordsError) -> CheckpointError:
    if error.refused:
        return CheckpointError(f"{path} was refused for safety and nothing in it ran: "
                               f"{_refusal_reason(error)}, which a file of plain tensors never "
                               "does; use Meta's original file")
    return CheckpointError(f"{path} is corrupt or not a file of tensors ({error}); use Meta's "
                           "original file")


def _load_records(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """(name -> TensorRecord or NotATensor, storage key -> (offset, size))."""
    if not zipfile.is_zipfile(path):
        raise _not_zip_error(path)
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{path} is not a torch checkpoint (no single data.pkl "
                                      "in its archive); download it again")
            folder = pickles[0].removesuffix("data.pkl")
            with archive.open(pickles[0]) as data_pkl:
                state = read_records(data_pkl, max_bytes=_MAX_PICKLE_BYTES)
            members = _data_members(archive, raw, path, folder)
    except RecordsError as e:
        raise _records_error(path, e) from e
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, NotImplementedError,
            struct.error, OverflowError, RecursionError, MemoryError) as e:
        raise CheckpointError(f"{path} is corrupt (its zip archive cannot be read); download it "
                              "again") from e
    if isinstance(state, dict):
        # Llama 4 files carry `_extra_state` entries (serialized io.BytesIO) beside the
        # tensors; Meta's loader and transformers' converter drop them, and so does this.
        state = {k: v for k, v in state.items()
                 if not (isinstance(k, str) and k.endswith("._extra_state")
                         and isinstance(v, NotATensor))}
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, TensorRecord) for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a dict of named tensors; is it a Meta "
                              "LLaMA checkpoint?")
    return state, members


def open_rank_file(path: Path, rank_idx: int) -> dict[str, TensorRef]:
    """Tensor references of one file, from its pickle and zip directory only."""
    state, members = _load_records(path)
    refs: dict[str, TensorRef] = {}
    for meta_name, record in state.items():
        if not record.contiguous:
            raise CheckpointError(f"tensor {meta_name} in {path} is not stored contiguously, "
                                  "which Meta's files never do; use Meta's original file")
        member = members.get(record.storage.key)
        offset = record.storage_offset * record.dtype.itemsize
        n_bytes = math.prod(record.shape) * record.dtype.itemsize
        if member is None or offset + n_bytes > member[1]:
            raise CheckpointError(f"{path} is corrupt (the bytes of {meta_name} are missing "
                                  "from its archive); download it again")
        if member[1] != record.storage.n_bytes:  # torch.load refuses this too
            raise CheckpointError(f"{path} is corrupt (the storage of {meta_name} should be "
                                  f"{record.storage.n_bytes} bytes, its zip member holds "
                                  f"{member[1]}); download it again")
        refs[meta_name] = TensorRef(rank_idx, meta_name, path, record.dtype,
                                    record.shape, member[0] + offset)
    return refs


def open_checkpoint(input_dir: Path) -> Checkpoint:
    paths = find_rank_paths(input_dir)
    tensors = tuple(open_rank_file(path, idx) for idx, path in enumerate(paths))
    scale_paths = find_scale_paths(input_dir, len(paths))
    scales = tuple(open_rank_file(path, len(paths) + rank) for rank, path in enumerate(scale_paths))
    return Checkpoint(input_dir, tuple(paths), tensors, tuple(scale_paths), scales)
