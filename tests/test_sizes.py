"""cli/sizes.py: sizes as users write them, read as Hugging Face reads them (GB decimal, GiB
binary) and a bare letter binary, as before."""

from __future__ import annotations

import pytest

from streamconv.cli.sizes import parse_size


@pytest.mark.parametrize("text,expected", [
    # bare letters: binary, as before GB became decimal
    ("8G", 8 << 30), ("512M", 512 << 20), ("1.5g", 3 << 29), ("64k", 64 << 10),
    # Hugging Face's units: GB decimal (huggingface_hub parse_size_to_int: "5GB" -> 5 * 10**9,
    # case-insensitive), GiB binary
    ("5GB", 5 * 10**9), ("5gb", 5 * 10**9), ("500MB", 500 * 10**6), ("10KB", 10**4),
    ("1TB", 10**12), ("8GiB", 8 << 30), ("8gib", 8 << 30), ("512MiB", 512 << 20),
    ("8Gi", 8 << 30), ("1.5 GiB", 3 << 29),
    ("1073741824", 1 << 30), ("100b", 100)])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_sizes_mean_what_hugging_face_means() -> None:
    """The oracles: huggingface_hub's parser (GB decimal, case-insensitive) and transformers'
    (GB decimal, GiB binary; it reads a lowercase "Gb" as gigabits, which we do not follow)."""
    from huggingface_hub.serialization._base import parse_size_to_int
    from transformers.utils.hub import convert_file_size_to_int

    for text in ("5GB", "5gb", "500MB", "10KB", "1TB", "1.5GB"):
        assert parse_size(text) == parse_size_to_int(text), text
    for text in ("5GB", "500MB", "10KB", "4GiB", "512MiB", "64KiB"):
        assert parse_size(text) == convert_file_size_to_int(text), text


@pytest.mark.parametrize("text", ["", "G", "8X", "-1G", "eight", "8i", "8iB", "GB", "8 GiBs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
