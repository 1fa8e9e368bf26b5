"""source/byte_samples.py: the prefixes it reads are the first bytes of the tensors torch.load
gives, in the order asked, from the rank file asked, and never more than the tensor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fixtures.synthetic import SyntheticSpec, tiny
from streamconv.model.family import Family
from streamconv.source.byte_samples import tensor_prefixes
from streamconv.source.tensor_index import open_checkpoint


def _bytes_of(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def test_prefixes_are_the_tensors_first_bytes(
        make_checkpoint: Callable[[SyntheticSpec], Path]) -> None:
    folder = make_checkpoint(tiny(Family.LLAMA2, n_ranks=2, with_tokenizer=False))
    ckpt = open_checkpoint(folder)
    loaded = [torch.load(folder / f"consolidated.{r:02d}.pth", weights_only=True)
              for r in range(2)]
    wanted = [(1, "layers.0.attention.wk.weight"), (0, "norm.weight"),
              (0, "layers.1.feed_forward.w2.weight")]
    got = tensor_prefixes(ckpt, wanted, max_bytes=100)
    assert got == [_bytes_of(loaded[r][name])[:100] for r, name in wanted]
    whole = tensor_prefixes(ckpt, [(1, "norm.weight")], max_bytes=1 << 30)
    assert whole == [_bytes_of(loaded[1]["norm.weight"])]
