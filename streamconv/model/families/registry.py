"""The registry of family descriptions: the one place detection, `--llama-version`, the
config writer, the tokenizer builder and `plan` look a family up.

The built-in families (families/llama.py, families/llama4.py) are loaded on first use, so this
module imports nothing that imports it back. `registered(description)` adds a family for the
length of a `with` block (tests register a toy family that way).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from streamconv.model.families.description import FamilyDescription

_BUILT_IN_MODULES = ("streamconv.model.families.llama", "streamconv.model.families.llama4",
                     "streamconv.model.families.llama32_vision")
_FAMILIES: dict[str, FamilyDescription] = {}
_loaded = False


def _load_built_ins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILT_IN_MODULES:
            for description in importlib.import_module(module).DESCRIPTIONS:
                register(description)


def register(description: FamilyDescription) -> None:
    """Add a family; its key must be new (a family is never silently replaced)."""
    _load_built_ins()
    if description.key in _FAMILIES:
        raise ValueError(f"a family with key {description.key!r} is already registered")
    _FAMILIES[description.key] = description


def unregister(key: str) -> None:
    _FAMILIES.pop(key)


@contextlib.contextmanager
def registered(description: FamilyDescription) -> Iterator[FamilyDescription]:
    """The family is known inside the block and forgotten after it."""
    register(description)
    try:
        yield description
    finally:
        unregister(description.key)


def describe(key: str) -> FamilyDescription:
    """The description of the family ``key`` (a Family member or a registered key)."""
    _load_built_ins()
    try:
        return _FAMILIES[key]
    except KeyError:
        raise ValueError(f"no family {key!r} is registered") from None


def all_families() -> tuple[FamilyDescription, ...]:
    """Every registered family, in registration order."""
    _load_built_ins()
    return tuple(_FAMILIES.values())


def recognisers() -> tuple[FamilyDescription, ...]:
    """Families that claim a checkpoint by their own keys, asked before any evidence rule."""
    return tuple(d for d in all_families() if d.recognise is not None)


def evidence_candidates() -> tuple[FamilyDescription, ...]:
    """Families the evidence rules choose among, most likely first when they cannot tell."""
    found = [d for d in all_families() if d.evidence_rank is not None]
    return tuple(sorted(found, key=lambda d: d.evidence_rank or 0))
