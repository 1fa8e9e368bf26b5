"""cli/dtype_label.py: the input dtypes as `plan` prints them, fp8 layers as runs."""

from __future__ import annotations

from streamconv.cli.dtype_label import describe_dtypes, layer_of
from streamconv.system import dtypes


def test_fp8_layers_are_listed_as_runs() -> None:
    assert describe_dtypes([], dtypes.BFLOAT16) == "bfloat16"
    assert (describe_dtypes([3, 1, 2, 2, 7, 9, 10], dtypes.BFLOAT16)
            == "float8_e4m3fn (feed-forward of layers 1-3, 7, 9-10) + bfloat16")


def test_layer_of_reads_the_layer_index() -> None:
    assert layer_of("layers.124.feed_forward.w2.weight") == 124
