"""Finding Meta's rank files: consolidated.NN.pth in rank order, the Hub's original/ folders,
the single-file names llama-stack and torchtune write, and the FP8 release's scale files.

Nothing here opens a file; tensor_index.py does, once each.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamconv.errors import CheckpointError

RANK_FILE_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
SINGLE_FILE_RE = re.compile(r"^(consolidated\.pth|meta_model_\d+\.pt|model-00001-of-00001\.bin)$")
# The Hugging Face Hub keeps Meta's files of the meta-llama repos in original/ (405B: in
# original/mp8 and original/mp16).
HUB_SUBFOLDER = "original"


def _has_rank_files(folder: Path) -> bool:
    return folder.is_dir() and any(RANK_FILE_RE.match(p.name) or SINGLE_FILE_RE.match(p.name)
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
    find_rank_paths(input_dir)  # raises the error that names what is missing
    return input_dir


def find_rank_paths(input_dir: Path) -> list[Path]:
    """consolidated.00.pth ... in rank order; a gap in the numbering is an error."""
    if not input_dir.is_dir():
        raise CheckpointError(f"input folder {input_dir} does not exist or is not a folder; "
                              "pass the folder that holds params.json and consolidated.00.pth")
    found = {int(m.group(1)): p for p in input_dir.iterdir() if (m := RANK_FILE_RE.match(p.name))}
    if not found:
        return [_single_file(input_dir)]
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise missing_ranks_error(input_dir, missing, len(found), max(found) + 1)
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
    models = sorted(p.name for p in input_dir.iterdir() if _has_rank_files(p))
    if models and not hint:  # Meta's download folder holds one folder per model
        names = ", ".join(models[:4]) + (", ..." if len(models) > 4 else "")
        hint = (f" (its subfolder {names} holds a checkpoint: pass that folder)"
                if len(models) == 1 else
                f" (its subfolders {names} hold checkpoints: pass one of them)")
    if others and not hint:
        hint = (f" ({others[0]} is not a name Meta's tools write: if it is a Meta-format "
                "checkpoint, rename it to consolidated.00.pth)")
    raise CheckpointError(f"no consolidated.NN.pth files in {input_dir}{hint}; pass the "
                          "folder of Meta's original checkpoint")


def missing_ranks_error(input_dir: Path, missing: list[int], n_found: int,
                         n_expected: int) -> CheckpointError:
    names = ", ".join(f"consolidated.{i:02d}.pth" for i in missing)
    return CheckpointError(f"{input_dir} is missing {names} (found {n_found} of {n_expected} "
                           "rank files); download the missing files again")


SCALES_RE = re.compile(r"^fp8_scales_(\d+)\.pt$")


def find_scale_paths(input_dir: Path, n_ranks: int) -> list[Path]:
    """fp8_scales_0.pt ... in rank order, or [] when the folder has none (not an FP8 release).

    Meta's FP8 405B download adds one fp8_scales_{rank}.pt per consolidated file, ".pt" with an
    unpadded rank (llama-stack sku_list.py llama_meta_net_info; llama-models PR #69), and its
    loader opens f"fp8_scales_{rank}.pt" for each rank (llama3/quantization/loader.py).
    """
    found = {int(m.group(1)): p for p in input_dir.iterdir() if (m := SCALES_RE.match(p.name))}
    if not found:
        return []
    missing = [f"fp8_scales_{i}.pt" for i in range(n_ranks) if i not in found]
    if missing:
        raise CheckpointError(f"{input_dir} is missing {', '.join(missing)} (Meta's FP8 release "
                              f"has one scale file per consolidated file, {n_ranks} here); "
                              "download the missing scale files again")
    extra = sorted(p.name for i, p in found.items() if i >= n_ranks)
    if extra:
        raise CheckpointError(f"{input_dir} holds {', '.join(extra)} but only {n_ranks} "
                              "consolidated files; remove the scale files of another download")
    return [found[i] for i in range(n_ranks)]
