"""Llama 3.2 Vision converts (issue 20): Meta's own model is the oracle.

Meta's `CrossAttentionTransformer` (llama-models 0.3.0, run in .venv-meta at the checkpoint's own
model-parallel size) writes the rank files and computes logits on a text-only and an image+text
prompt and the projected vision tokens (tests/vision_reference.py). streamconv converts the
files with no flags; transformers runs the result (tests/vision_oracle.py) and must agree.
Separately, every tensor streamconv writes must equal the one transformers' own
convert_mllama_weights_to_hf.py (4.47.1) writes from the same files, so the precomputed tile
embeddings are checked for every aspect ratio, not only for the one the prompt's image uses.

The tiny tower's intermediate layers ([1, 3]) are not a release's and cannot be read from the
tensors (only their count shows), so the test's params.json names them in the key streamconv
reads for that (model/mllama.py INTERMEDIATE_KEY); Meta's ModelArgs ignores unknown keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import in_process_budget
from mllama_transformers_script import convert_with_mllama_script
from mllama_transformers_script import missing_reason as script_missing
from safetensors.torch import load_file
from vision_oracle import compare_with_hf
from vision_reference import MetaVisionReference, run_meta_reference
from vision_reference import missing_reason as meta_missing

import streamconv
from fixtures.llama32_vision_inputs import IMAGE_TOKEN_ID
from fixtures.synthetic_tokenizer import write_synthetic_tokenizer
from streamconv.model.mllama import INTERMEDIATE_KEY

pytestmark = pytest.mark.oracle(meta_missing())
MP_SIZES = [1, 2, pytest.param(8, marks=pytest.mark.slow)]

Run = tuple[Path, MetaVisionReference]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiktoken ranks file of 128000 ranks: with Meta's 256 specials, 128256 ids, the rows
    of the releases' (and the oracle's) tok_embeddings."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    write_synthetic_tokenizer(path, kind="tiktoken", vocab_size=128000)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory,
              tokenizer_file: Path) -> Callable[[int], tuple[Path, Path, MetaVisionReference]]:
    """mp -> (Meta's folder as the user has it, streamconv's output, what Meta computed)."""
    cache: dict[int, tuple[Path, Path, MetaVisionReference]] = {}

    def run(mp: int) -> tuple[Path, Path, MetaVisionReference]:
        if mp not in cache:
            root = tmp_path_factory.mktemp(f"vision{mp}")
            ckpt, reference = run_meta_reference(root, mp=mp)
            folder = root / "Llama-3.2-11B-Vision-tiny"
            folder.mkdir()
            for item in ckpt.glob("consolidated.*.pth"):
                os.symlink(item, folder / item.name)
            params = json.loads((ckpt / "params.json").read_text())
            params[INTERMEDIATE_KEY] = reference.vision["return_intermediate"]
            (folder / "params.json").write_text(json.dumps(params))
            os.symlink(tokenizer_file, folder / "tokenizer.model")
            out = root / "hf"
            report = streamconv.convert(folder, out, streamconv.ConvertOptions(
                max_ram_bytes=int(in_process_budget())))
            assert report.family == "Llama 3.2 Vision" and not report.warnings
            cache[mp] = folder, out, reference
        return cache[mp]

    return run


@pytest.mark.parametrize("mp", MP_SIZES)
def test_logits_match_metas_model(mp: int, converted: Callable[[int], tuple[Path, Path,
                                                                           MetaVisionReference]]
                                  ) -> None:
    _, out, reference = converted(mp)
    # The image path must matter, or the image comparison would prove nothing.
    assert (reference.image_logits[0, 1:] - reference.text_logits[0]).abs().max() > 0.1
    compare_with_hf(out, reference).assert_close()


@pytest.mark.oracle(script_missing())
@pytest.mark.parametrize("mp", [1, 2])
def test_every_tensor_equals_transformers_converter(
        mp: int, converted: Callable[[int], tuple[Path, Path, MetaVisionReference]],
        tmp_path: Path) -> None:
    folder, out, reference = converted(mp)
    script_out = convert_with_mllama_script(folder, tmp_path / "script",
                                            vision=reference.vision)
    theirs: dict[str, torch.Tensor] = {}
    for path in sorted(script_out.glob("*.safetensors")):
        theirs.update(load_file(path))
    ours: dict[str, torch.Tensor] = {}
    for path in sorted(out.glob("*.safetensors")):
        ours.update(load_file(path))
    assert set(ours) == set(theirs)
    differ = [name for name in ours if ours[name].dtype != theirs[name].dtype
              or ours[name].shape != theirs[name].shape or not torch.equal(ours[name],
                                                                           theirs[name])]
    assert not differ, differ
    # The precomputed tile embeddings carry zeros the input does not (padding row, unused
    # tile slots): a stale buffer would show here.
    tiles = ours["vision_model.gated_positional_embedding.tile_embedding.weight"]
    assert tiles[0].abs().max() == 0 and tiles[1].abs().max() > 0


def test_config_and_tokenizer_load_as_published(
        converted: Callable[[int], tuple[Path, Path, MetaVisionReference]]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    _, out, _ = converted(1)
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "mllama"
    # 4 text layers with Meta's fusion schedule [1, 3]: each cross-attention layer just before
    # its text layer in transformers' one list of 6.
    assert config.text_config.cross_attention_layers == [1, 4]
    assert config.text_config.num_hidden_layers == 6
    assert config.vision_config.intermediate_layers_indices == [1, 3]
    assert config.image_token_index == IMAGE_TOKEN_ID
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 128257
    assert tokenizer.convert_tokens_to_ids("<|image|>") == IMAGE_TOKEN_ID
    ids = tokenizer("<|image|>Describe it.")["input_ids"]
    assert ids[:2] == [128000, IMAGE_TOKEN_ID]
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == {"height": 28, "width": 28}
    assert preprocessor["max_image_tiles"] == 4


def test_fixture_writer_has_metas_names_and_rank_shapes(
        converted: Callable[[int], tuple[Path, Path, MetaVisionReference]]) -> None:
    """fixtures/llama32_vision_checkpoint.py (the release tests' and benchmarks' checkpoints,
    written from streamconv's table) against the files Meta's own model wrote for the same
    sizes: the same tensor names, and every rank's shapes."""
    from fixtures.llama32_vision_checkpoint import VisionSpec, rank_shapes
    from fixtures.llama32_vision_inputs import TINY_PARAMS, TINY_VISION

    folder, _, _ = converted(2)
    spec = VisionSpec(dim=TINY_PARAMS["dim"], n_layers=TINY_PARAMS["n_layers"],
                      n_heads=TINY_PARAMS["n_heads"], n_kv_heads=TINY_PARAMS["n_kv_heads"],
                      n_cross=TINY_PARAMS["vision_num_cross_attention_layers"],
                      multiple_of=TINY_PARAMS["multiple_of"],
                      chunk_size=TINY_PARAMS["vision_chunk_size"],
                      vision_width=TINY_VISION["width"], local_layers=TINY_VISION["layers"],
                      global_layers=TINY_VISION["n_global_layers"],
                      intermediate=tuple(TINY_VISION["return_intermediate"]), n_ranks=2)
    ours = rank_shapes(spec)
    for rank in range(2):
        state = torch.load(folder / f"consolidated.{rank:02d}.pth", weights_only=True,
                           map_location="cpu", mmap=True)
        assert {name: tuple(t.shape) for name, t in state.items()} == ours
