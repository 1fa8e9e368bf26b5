"""Protobuf wire format for SentencePiece's ModelProto, read by hand.

The runtime may not depend on protobuf, yet the converter must know the normalizer and trainer
settings (the SentencePieceProcessor API does not expose them). Only the handful of fields it
needs are named here; field numbers come from sentencepiece's ``sentencepiece_model.proto``.
The test fixtures write models with the same numbers (fixtures/spm_writer.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# ModelProto
MODEL_PIECES = 1
MODEL_TRAINER_SPEC = 2
MODEL_NORMALIZER_SPEC = 3
# ModelProto.SentencePiece
PIECE_TEXT = 1
PIECE_SCORE = 2
PIECE_TYPE = 3
# TrainerSpec
TRAINER_MODEL_TYPE = 3
TRAINER_VOCAB_SIZE = 4
TRAINER_SPLIT_BY_WHITESPACE = 22
TRAINER_TREAT_WHITESPACE_AS_SUFFIX = 24
TRAINER_SPLIT_DIGITS = 25
TRAINER_BYTE_FALLBACK = 35
TRAINER_UNK_ID = 40
TRAINER_BOS_ID = 41
TRAINER_EOS_ID = 42
TRAINER_PAD_ID = 43
# NormalizerSpec
NORMALIZER_NAME = 1
NORMALIZER_CHARSMAP = 2
NORMALIZER_ADD_DUMMY_PREFIX = 3
NORMALIZER_REMOVE_EXTRA_WHITESPACES = 4
NORMALIZER_ESCAPE_WHITESPACES = 5

# TrainerSpec.ModelType and ModelProto.SentencePiece.Type values.
MODEL_TYPE_BPE = 2
PIECE_NORMAL = 1
PIECE_UNKNOWN = 2
PIECE_CONTROL = 3
PIECE_USER_DEFINED = 4
PIECE_UNUSED = 5
PIECE_BYTE = 6

_VARINT = 0
_FIXED64 = 1
_LEN = 2
_FIXED32 = 5

FieldValue = int | bytes


@dataclass(frozen=True)
class Field:
    """One top-level field of a message: varints and fixed values as int, LEN payloads as bytes."""

    number: int
    wire_type: int
    value: FieldValue
    raw: bytes  # the encoded field, tag included, so untouched fields can be copied verbatim


@dataclass(frozen=True)
class SpmSettings:
    """The proto settings that decide how text becomes pieces; defaults are the proto defaults."""

    model_type: int = 1
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    has_charsmap: bool = False
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError(f"truncated or overlong varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def iter_fields(data: bytes) -> Iterator[tuple[int, int, FieldValue, int, int]]:
    """(number, wire type, value, start, end) of each field of one message, without copying
    raw bytes; raises ValueError on anything that is not protobuf."""
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {start}")
        value: FieldValue
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError(f"field {number} runs past the end of the data")
            value, pos = data[pos : pos + length], pos + length
        elif wire_type in (_FIXED32, _FIXED64):
            width = 4 if wire_type == _FIXED32 else 8
            if pos + width > len(data):
                raise ValueError(f"field {number} runs past the end of the data")
            value, pos = int.from_bytes(data[pos : pos + width], "little"), pos + width
        else:
            raise ValueError(f"unsupported wire type {wire_type} at byte {start}")
        yield number, wire_type, value, start, pos


def read_fields(data: bytes) -> list[Field]:
    """Split one message into its fields; raises ValueError on anything that is not protobuf."""
    return [Field(n, w, v, data[start:end]) for n, w, v, start, end in iter_fields(data)]


def piece_types(model_fields: list[Field]) -> list[int]:
    """Piece types by id, from a ModelProto's fields (NORMAL where the type is left out)."""
    types: list[int] = []
    for field in model_fields:
        if field.number == MODEL_PIECES and isinstance(field.value, bytes):
            piece_type = PIECE_NORMAL
            for number, _, value, _, _ in iter_fields(field.value):
                if number == PIECE_TYPE and isinstance(value, int):
                    piece_type = value
            types.append(piece_type)
    return types


def _last(fields: list[Field], number: int) -> FieldValue | None:
    # Protobuf semantics: for a repeated occurrence of a singular field, the last one wins.
    found = [f.value for f in fields if f.number == number]
    return found[-1] if found else None


def _flag(fields: list[Field], number: int, default: bool) -> bool:
    value = _last(fields, number)
    return default if value is None else bool(value)


def _message(fields: list[Field], number: int) -> list[Field]:
    # Protobuf merges repeated occurrences of an embedded message, which is what parsing the
    # concatenation of their payloads does.
    payload = b"".join(f.value for f in fields if f.number == number and isinstance(f.value, bytes))
    return read_fields(payload)


def read_settings(model: bytes | list[Field]) -> SpmSettings:
    """Read the trainer and normalizer settings of a ModelProto, serialized or split in fields."""
    top = read_fields(model) if isinstance(model, bytes) else model
    trainer = _message(top, MODEL_TRAINER_SPEC)
    normalizer = _message(top, MODEL_NORMALIZER_SPEC)
    model_type = _last(trainer, TRAINER_MODEL_TYPE)
    name = _last(normalizer, NORMALIZER_NAME)
    charsmap = _last(normalizer, NORMALIZER_CHARSMAP)
    return SpmSettings(
        model_type=model_type if isinstance(model_type, int) else 1,
        byte_fallback=_flag(trainer, TRAINER_BYTE_FALLBACK, False),
        treat_whitespace_as_suffix=_flag(trainer, TRAINER_TREAT_WHITESPACE_AS_SUFFIX, False),
        normalizer_name=name.decode("utf-8", "replace") if isinstance(name, bytes) else "",
        has_charsmap=isinstance(charsmap, bytes) and len(charsmap) > 0,
        add_dummy_prefix=_flag(normalizer, NORMALIZER_ADD_DUMMY_PREFIX, True),
        remove_extra_whitespaces=_flag(normalizer, NORMALIZER_REMOVE_EXTRA_WHITESPACES, True),
        escape_whitespaces=_flag(normalizer, NORMALIZER_ESCAPE_WHITESPACES, True),
    )
