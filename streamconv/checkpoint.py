"""Meta's consolidated.NN.pth files, opened lazily: tensor references, not tensor data.

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

import errno
import os
import pickle
import re
import struct
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .direct_io import ALIGN, is_aligned, open_direct
from .errors import CheckpointError
from .platform_io import has_os_call

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
_DATA_MEMBER_RE = re.compile(r"^[^/]+/data/\d+$")
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, skipped fields, name length, extra length


@dataclass(frozen=True)
class TensorRef:
    """Where one shard's tensor lives on disk; no data."""

    shard_idx: int
    meta_name: str
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset_bytes: int

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n * self.itemsize


@dataclass(frozen=True)
class Checkpoint:
    input_dir: Path
    shard_paths: tuple[Path, ...]
    tensors: tuple[dict[str, TensorRef], ...]  # one dict per shard, keyed by meta_name
    # Meta's FP8 release (405B): fp8_scales_N.pt per rank, indexed like the shards; the refs'
    # shard_idx is n_shards + rank, their index in read_paths. Empty for every other release.
    scale_paths: tuple[Path, ...] = ()
    scales: tuple[dict[str, TensorRef], ...] = ()

    @property
    def n_shards(self) -> int:
        return len(self.shard_paths)

    @property
    def read_paths(self) -> tuple[Path, ...]:
        """Every file a job reads from, in the order ShardReader indexes them."""
        return self.shard_paths + self.scale_paths


# Single-file Meta-format checkpoints under other names (docs/releases.md): llama-stack's
# consolidated.pth, torchtune's Meta checkpointer output (meta_model_N.pt, N the epoch, and
# since late 2024 model-00001-of-00001.bin). All hold one rank with Meta's tensor names.
SINGLE_FILE_RE = re.compile(r"^(consolidated\.pth|meta_model_\d+\.pt|model-00001-of-00001\.bin)$")
# The Hugging Face Hub keeps Meta's files of the meta-llama repos in original/ (405B: in
# original/mp8 and original/mp16).
HUB_SUBFOLDER = "original"


def _has_rank_files(folder: Path) -> bool:
    return folder.is_dir() and any(SHARD_RE.match(p.name) or SINGLE_FILE_RE.match(p.name)
                                   for p in folder.iterdir())


def resolve_input_dir(input_dir: Path) -> Path:
    """The folder that holds Meta's files: input_dir, or its original/ as the Hub lays it out."""
    if not input_dir.is_dir():
        raise CheckpointError(f"input folder {input_dir} does not exist or is not a folder; "
                              "pass the folder that holds params.json and consolidated.00.pth")
    if _has_rank_files(input_dir):
        return input_dir
    hub = input_dir / HUB_SUBFOLDER
    if _has_rank_files(hub):
        return hub
    layouts = sorted(p for p in hub.glob("mp*") if _has_rank_files(p)) if hub.is_dir() else []
    if len(layouts) == 1:
        return layouts[0]
    if layouts:
        names = " or ".join(str(p) for p in layouts)
        raise CheckpointError(f"{hub} holds the same model in {len(layouts)} layouts; pass one "
                              f"of {names} (both convert to the same model)")
    find_shard_paths(input_dir)  # raises the error that names what is missing
    return input_dir


def find_shard_paths(input_dir: Path) -> list[Path]:
    """consolidated.00.pth ... in rank order; a gap in the numbering is an error."""
    if not input_dir.is_dir():
        raise CheckpointError(f"input folder {input_dir} does not exist or is not a folder; "
                              "pass the folder that holds params.json and consolidated.00.pth")
    found = {int(m.group(1)): p for p in input_dir.iterdir() if (m := SHARD_RE.match(p.name))}
    if not found:
        return [_single_file(input_dir)]
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise missing_shards_error(input_dir, missing, len(found), max(found) + 1)
    for path in found.values():
        _check_regular(path)
    return [found[i] for i in sorted(found)]


def _check_regular(path: Path) -> None:
    if not path.is_file():
        what = "a folder" if path.is_dir() else "a broken link" if path.is_symlink() else (
            "not a regular file")
        raise CheckpointError(f"{path} is {what}, not a checkpoint file; download it again")


def _single_file(input_dir: Path) -> Path:
    singles = sorted(p for p in input_dir.iterdir() if SINGLE_FILE_RE.match(p.name))
    if len(singles) == 1:
        _check_regular(singles[0])
        return singles[0]
    if singles:
        names = ", ".join(p.name for p in singles)
        raise CheckpointError(f"{input_dir} holds {len(singles)} single-file checkpoints ({names})"
                              "; move the one to convert into a folder of its own with "
                              "params.json and tokenizer.model")
    hint = ""
    if (input_dir / "config.json").exists() or any(input_dir.glob("*.safetensors")):
        hint = " (it looks like a Hugging Face folder, which is already converted)"
    others = sorted(p.name for p in input_dir.iterdir() if p.suffix in (".pth", ".pt", ".bin"))
    if others and not hint:
        hint = (f" ({others[0]} is not a name Meta's tools write: if it is a Meta-format "
                "checkpoint, rename it to consolidated.00.pth)")
    raise CheckpointError(f"no consolidated.NN.pth files in {input_dir}{hint}; pass the "
                          "folder of Meta's original checkpoint")


def missing_shards_error(input_dir: Path, missing: list[int], n_found: int,
                         n_expected: int) -> CheckpointError:
    names = ", ".join(f"consolidated.{i:02d}.pth" for i in missing)
    return CheckpointError(f"{input_dir} is missing {names} (found {n_found} of {n_expected} "
                           "shards); download the missing files again")


SCALES_RE = re.compile(r"^fp8_scales_(\d+)\.pt$")


def find_scale_paths(input_dir: Path, n_shards: int) -> list[Path]:
    """fp8_scales_0.pt ... in rank order, or [] when the folder has none (not an FP8 release).

    Meta's FP8 405B download adds one fp8_scales_{rank}.pt per consolidated file, ".pt" with an
    unpadded rank (llama-stack sku_list.py llama_meta_net_info; llama-models PR #69), and its
    loader opens f"fp8_scales_{rank}.pt" for each rank (llama3/quantization/loader.py).
    """
    found = {int(m.group(1)): p for p in input_dir.iterdir() if (m := SCALES_RE.match(p.name))}
    if not found:
        return []
    missing = [f"fp8_scales_{i}.pt" for i in range(n_shards) if i not in found]
    if missing:
        raise CheckpointError(f"{input_dir} is missing {', '.join(missing)} (Meta's FP8 release "
                              f"has one scale file per consolidated file, {n_shards} here); "
                              "download the missing scale files again")
    extra = sorted(p.name for i, p in found.items() if i >= n_shards)
    if extra:
        raise CheckpointError(f"{input_dir} holds {', '.join(extra)} but only {n_shards} "
                              "consolidated files; remove the scale files of another download")
    return [found[i] for i in range(n_shards)]


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


def _load_metadata(path: Path) -> dict[str, torch.Tensor]:
    if not zipfile.is_zipfile(path):
        raise _not_zip_error(path)
    try:
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} was refused for safety and nothing in it ran: "
                              f"{_refusal_reason(e)}, which a file of plain tensors never does; "
                              "use Meta's original file") from e
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is corrupt (its zip archive cannot be read); download it "
                              "again") from e
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a dict of named tensors; is it a Meta "
                              "LLaMA checkpoint?")
    return state


def open_shard(path: Path, shard_idx: int) -> dict[str, TensorRef]:
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
        refs[meta_name] = TensorRef(shard_idx, meta_name, path, tensor.dtype,
                                    tuple(tensor.shape), offset)
    del state
    return refs


def open_checkpoint(input_dir: Path) -> Checkpoint:
    paths = find_shard_paths(input_dir)
    tensors = tuple(open_shard(path, idx) for idx, path in enumerate(paths))
    scale_paths = find_scale_paths(input_dir, len(paths))
    scales = tuple(open_shard(path, len(paths) + rank) for rank, path in enumerate(scale_paths))
    return Checkpoint(input_dir, tuple(paths), tensors, tuple(scale_paths), scales)


class ShardReader:
    """Open file handles for positioned reads into caller-owned buffers, from many threads.

    read_span reads with O_DIRECT where it can (see direct_io.py): the device's DMA fills the
    buffer instead of the kernel copying out of the page cache. Bytes below cached_prefix of
    every file are read through the page cache instead, because the command line has asked the
    kernel to read them there already (prefetch.py) and O_DIRECT would read them again.
    """

    def __init__(self, paths: Sequence[Path], *, cached_prefix: int = 0) -> None:
        self._paths = list(paths)
        self._fds: list[int] = []
        self._direct_fds: list[int | None] = []
        self._refused: list[int] = []
        self._locks = [threading.Lock() for _ in self._paths]
        self.cached_prefix = cached_prefix

    def __enter__(self) -> ShardReader:
        for path in self._paths:
            try:
                self._fds.append(os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)))
            except OSError as e:
                self.close()
                raise CheckpointError(f"cannot open {path} ({e.strerror}); check that it is "
                                      "readable") from e
            self._direct_fds.append(open_direct(path, os.O_RDONLY))
        return self

    def direct(self, shard_idx: int) -> bool:
        """Whether read_span can bypass the page cache for this file."""
        return self._direct_fds[shard_idx] is not None

    def read_span(self, shard_idx: int, offset: int, n_bytes: int, area: memoryview) -> int:
        """Read [offset, offset + n_bytes) of a file into area; returns where in area it starts.

        area needs n_bytes + SPAN_SLACK bytes: O_DIRECT reads whole blocks, so the bytes land
        at offset's distance from the block boundary below it."""
        fd = self._direct_fds[shard_idx]
        start = offset % ALIGN
        length = -(-(start + n_bytes) // ALIGN) * ALIGN
        window = area[:length]
        if (fd is None or offset + n_bytes <= self.cached_prefix or len(window) < length
                or not is_aligned(window, offset - start)):
            self.read_into(shard_idx, offset, area[:n_bytes])
            return 0
        try:
            got = self._pread_all(fd, window, offset - start)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # The file system opened the file with O_DIRECT but refuses the I/O: stop trying
            # (the descriptor stays open until close, another thread may be using it).
            self._direct_fds[shard_idx] = None
            self._refused.append(fd)
            self.read_into(shard_idx, offset, area[:n_bytes])
            return 0
        if got < start + n_bytes:
            raise CheckpointError(f"{self._paths[shard_idx]} ended early (truncated?); "
                                  "download it again")
        return start

    @staticmethod
    def _pread_all(fd: int, window: memoryview, position: int) -> int:
        """Bytes read into window from position, fewer only at the end of the file."""
        done = 0
        while done < len(window):
            n = os.preadv(fd, [window[done:]], position + done)
            done += n
            if n == 0 or n % ALIGN:  # a part block: the end of the file
                break
        return done

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in [*self._fds, *self._direct_fds, *self._refused]:
            if fd is not None:
                os.close(fd)
        self._fds, self._direct_fds, self._refused = [], [], []

    def read_into(self, shard_idx: int, offset: int, buffer: memoryview) -> None:
        """Fill buffer from the file at offset; short reads are retried, EOF is an error."""
        fd = self._fds[shard_idx]
        done = 0
        while done < len(buffer):
            part = buffer[done:]
            if has_os_call("preadv"):
                n = os.preadv(fd, [part], offset + done)
            else:  # Windows: no positioned reads, so serialise seek + read per file
                with self._locks[shard_idx]:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    data = os.read(fd, len(part))
                part[:len(data)] = data
                n = len(data)
            if n == 0:
                raise CheckpointError(f"{self._paths[shard_idx]} ended early (truncated?); "
                                      "download it again")
            done += n
