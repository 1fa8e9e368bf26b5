"""transformers' own convert_mllama_weights_to_hf.py, run on a checkpoint Meta's model wrote.

A converter nobody on this team wrote, used to validate the vision oracle before streamconv
converts Llama 3.2 Vision: if Meta's logits and transformers' logits agree on this script's
output, the oracle (tests/vision_reference.py + tests/vision_oracle.py) is right about inputs,
masks, token order and tolerances.

The script ships in transformers 4.47.1 (`.venv-peer`, scripts/make_peer_env.sh), not in 5.25's
wheel (`.venv`). Its `write_model` hard-codes the vision tower as local variables (32 layers,
8 global, width 1280, 16 heads, intermediate layers [3, 7, 15, 23, 30]), the same constants
Meta's code hard-codes, and leaves `vision_output_dim` at MllamaVisionConfig's default 7680
(1280 * 6). The tiny tower of the oracle needs those six things changed, so the script's source
is read from the installed wheel, exactly those five assignments are replaced and
`vision_output_dim=` is added to the MllamaVisionConfig call (each text must occur once, else
this fails), and the result is executed as a module. Everything
else (key renames, layer interleave, q/k permute, shard concat, gate and position-embedding
transforms, `learnable_embedding` appended to `embed_tokens`) is the script's own.

Three more things it needs: `image_processing_mllama` imports PIL, absent from .venv-peer, and
the script uses only its pure `get_all_supported_aspect_ratios`, so that one function's source
is loaded (ast) into a stand-in module; it opens `consolidated.pth` when num_shards == 1
(Meta's runner writes `consolidated.00.pth`, so a folder of symlinks is given); and it writes
bf16 (lossless here: the runner's weights are bf16 values).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON_ENV = "STREAMCONV_PEER_PYTHON"
TIMEOUT_S = 600

_PEER_CODE = r"""
import ast, contextlib, io, json, sys, types
import transformers.models.mllama as pkg
from pathlib import Path
job = json.loads(sys.argv[1])
# image_processing_mllama needs PIL, which .venv-peer lacks; the script takes one pure function
# from it. Load that function's own source into a stand-in module.
processing = Path(pkg.__file__).parent / "image_processing_mllama.py"
tree = ast.parse(processing.read_text())
body = [n for n in tree.body if isinstance(n, ast.FunctionDef)
        and n.name == "get_all_supported_aspect_ratios"]
stand_in = types.ModuleType("transformers.models.mllama.image_processing_mllama")
stand_in.__dict__.update(List=list, Tuple=tuple, lru_cache=__import__("functools").lru_cache)
exec(compile(ast.Module(body=body, type_ignores=[]), str(processing), "exec"), stand_in.__dict__)
sys.modules[stand_in.__name__] = stand_in
path = Path(pkg.__file__).parent / "convert_mllama_weights_to_hf.py"
source = path.read_text()
for old, new in job["replace"]:
    if source.count(old) != 1:
        raise SystemExit(f"{path}: expected one {old!r}, found {source.count(old)}")
    source = source.replace(old, new)
module = types.ModuleType("convert_mllama_patched")
module.__file__ = str(path)
exec(compile(source, str(path), "exec"), module.__dict__)
with contextlib.redirect_stdout(io.StringIO()) as log:
    module.write_model(model_path=job["dst"], input_base_path=job["src"],
                       num_shards=job["num_shards"], safe_serialization=True, instruct=False)
print(log.getvalue()[-2000:])
"""


# The script itself cannot be imported there (PIL, see above): check it ships and runs' deps.
_PROBE_CODE = """
from pathlib import Path
import transformers.models.mllama as pkg
from transformers import MllamaForConditionalGeneration
assert (Path(pkg.__file__).parent / "convert_mllama_weights_to_hf.py").exists(), "no script"
"""


def peer_python() -> Path | None:
    """.venv-peer's interpreter (or $STREAMCONV_PEER_PYTHON), None when missing."""
    configured = os.environ.get(PEER_PYTHON_ENV)
    path = Path(configured) if configured else REPO / ".venv-peer" / "bin" / "python"
    return path if path.exists() else None


def missing_reason() -> str | None:
    """Why the script cannot run here, or None."""
    python = peer_python()
    if python is None:
        return f"no .venv-peer: run scripts/make_peer_env.sh or set {PEER_PYTHON_ENV}"
    probe = subprocess.run(
        [str(python), "-c", _PROBE_CODE],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} has no convert_mllama_weights_to_hf: {last}"
    return None


def _replacements(vision: dict[str, Any]) -> list[tuple[str, str]]:
    """The hard-coded tower constants of write_model, as 4.47.1 spells them."""
    return [
        ("    vision_num_layers = 32\n", f"    vision_num_layers = {vision['layers']}\n"),
        ("    vision_num_layers_global = 8\n",
         f"    vision_num_layers_global = {vision['n_global_layers']}\n"),
        ("    vision_dim = 1280\n", f"    vision_dim = {vision['width']}\n"),
        ("    vision_num_heads = 16\n", f"    vision_num_heads = {vision['heads']}\n"),
        ("    vision_intermediate_layers_indices = [3, 7, 15, 23, 30]\n",
         f"    vision_intermediate_layers_indices = {list(vision['return_intermediate'])}\n"),
        # The script leaves vision_output_dim at MllamaVisionConfig's default, 7680 = 1280 * 6.
        ("        hidden_size=vision_dim,\n",
         "        hidden_size=vision_dim,\n        vision_output_dim=vision_dim * "
         "(len(vision_intermediate_layers_indices) + 1),\n"),
    ]


def convert_with_mllama_script(ckpt_dir: Path, out_dir: Path, *, vision: dict[str, Any]) -> Path:
    """Run the (tower-patched) script on ckpt_dir's rank files; returns out_dir."""
    python = peer_python()
    if python is None:
        raise FileNotFoundError(missing_reason())
    rank_files = sorted(ckpt_dir.glob("consolidated.*.pth"))
    src = ckpt_dir
    if len(rank_files) == 1:  # the script reads consolidated.pth for one shard
        src = out_dir.parent / f"{out_dir.name}-input"
        src.mkdir(parents=True)
        (src / "consolidated.pth").symlink_to(rank_files[0])
        (src / "params.json").symlink_to(ckpt_dir / "params.json")
    job = {"src": str(src), "dst": str(out_dir), "num_shards": len(rank_files),
           "replace": _replacements(vision)}
    proc = subprocess.run([str(python), "-c", _PEER_CODE, json.dumps(job)], capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_mllama_weights_to_hf.py failed on {ckpt_dir} "
                           f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-6000:]}")
    return out_dir
