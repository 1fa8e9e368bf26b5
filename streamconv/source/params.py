"""params.json as Meta writes it, read into a frozen dataclass with Meta's own field names.

This is the one place a raw params.json value is looked at: every number is typed and
range-checked here (finite, whole where it must be, positive, within bounds no release comes
near, divisible where the architecture needs it), so nothing downstream sees NaN, a negative
head count or a 400-digit integer. What the values mean for the output (family, vocab size when
Meta wrote -1, FFN size) is decided in detect.py, with the tensor shapes at hand; the numbers
are checked against those shapes there before anything per layer is built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamconv.errors import ParamsError

KNOWN_KEYS = frozenset({
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
    "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope", "max_seq_len",
    "max_batch_size",
    # Llama 4 (model/llama4.py reads them; llama-models' llama4/args.py ModelArgs).
    "moe_args", "vision_args", "nope_layer_interval", "attention_chunk_size", "use_qk_norm",
    "ffn_exp", "rope_scaling_factor", "rope_high_freq_factor", "attn_temperature_tuning",
    "floor_scale", "attn_scale",
    # Llama 3.2 Vision (model/mllama.py reads them; llama-models' llama3/args.py ModelArgs),
    # and the key a tower that is not a release's adds (mllama.INTERMEDIATE_KEY).
    "vision_chunk_size", "vision_max_num_chunks", "vision_num_cross_attention_layers",
    "vision_intermediate_layers",
})
# Meta's params.json files are a few hundred bytes; anything this large is not one.
_MAX_FILE_BYTES = 1 << 20
# No integer in a real params.json has more digits than this (the largest is Llama 4's
# 10485760 context); longer ones are refused while parsing, before int() sees them.
_MAX_INT_DIGITS = 18
# Upper bounds far above every release (the largest: Llama 3.1 405B dim 16384, 126 layers,
# 128 heads; Llama 4 vocab 202048; docs/releases.md), so that a damaged value fails here
# instead of sizing memory or loops later.
_INT_BOUNDS = {"dim": 1 << 18, "n_layers": 1 << 12, "n_heads": 1 << 12, "n_kv_heads": 1 << 12,
               "vocab_size": 1 << 24, "multiple_of": 1 << 20, "max_seq_len": 1 << 30,
               "max_batch_size": 1 << 20}
# (exclusive lower, inclusive upper): norm_eps is 1e-5 or 1e-6 in every release, rope_theta
# 10000 to 1e6 (Code Llama), ffn_dim_multiplier 1.0 to 1.5.
_FLOAT_BOUNDS = {"norm_eps": (0.0, 0.1), "rope_theta": (0.0, 1e10),
                 "ffn_dim_multiplier": (0.0, 64.0)}


@dataclass(frozen=True)
class MetaParams:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None
    vocab_size: int | None  # None when absent or -1 (LLaMA 1/2 ship -1)
    multiple_of: int | None
    ffn_dim_multiplier: float | None
    norm_eps: float
    rope_theta: float | None
    use_scaled_rope: bool
    unknown_keys: tuple[str, ...] = field(default=())
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _shown(value: Any) -> str:
    """A value for a message, never longer than a line (a damaged file can hold anything)."""
    text = json.dumps(value) if isinstance(value, (int, float, str, bool)) else type(
        value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _int(raw: dict[str, Any], key: str, path: Path) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 4096.0: a whole number written as a float
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{path}: {key} is {_shown(value)}, expected a whole number; fix "
                          "params.json")
    if not 0 < value <= _INT_BOUNDS[key]:
        raise ParamsError(f"{path}: {key} is {_shown(value)}, expected a whole number from 1 to "
                          f"{_INT_BOUNDS[key]}; fix params.json")
    return value


def _float(raw: dict[str, Any], key: str, path: Path) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    low, high = _FLOAT_BOUNDS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low < float(value) <= high):
        raise ParamsError(f"{path}: {key} is {_shown(value)}, expected a number above {low:g} "
                          f"and at most {high:g}; fix params.json")
    return float(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"{text[:20]} is beyond the range of a number")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ParamsError(f"{path} is {path.stat().st_size} bytes, far more than a "
                              "params.json holds; use the params.json of the checkpoint")
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant,
                         parse_int=_bounded_int, parse_float=_finite_float)
    except RecursionError as e:
        raise ParamsError(f"{path} is nested too deeply to be a params.json; use the "
                          "params.json of the checkpoint") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = str(e) if len(str(e)) <= 80 else str(e)[:77] + "..."
        raise ParamsError(f"{path} is not valid JSON ({reason}); download it again") from e
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} does not hold a JSON object; download it again")
    nested = raw.get("model")
    return nested if isinstance(nested, dict) else raw


def read_params(input_dir: Path) -> MetaParams:
    path = input_dir / "params.json"
    if not path.is_file():
        raise ParamsError(f"{path} is missing; Meta's checkpoint folders ship it next to "
                          "consolidated.00.pth: copy it there")
    raw = _load_json(path)
    dim, n_layers, n_heads = (_int(raw, key, path) for key in ("dim", "n_layers", "n_heads"))
    for key, value in (("dim", dim), ("n_layers", n_layers), ("n_heads", n_heads)):
        if value is None:
            raise ParamsError(f"{path} lacks a positive {key!r}; is this a LLaMA params.json?")
    assert dim is not None and n_layers is not None and n_heads is not None
    n_kv_heads = _int(raw, "n_kv_heads", path)
    if dim % n_heads or (n_kv_heads is not None and n_heads % n_kv_heads):
        raise ParamsError(f"{path}: dim={dim}, n_heads={n_heads}, n_kv_heads={n_kv_heads} do "
                          "not divide evenly (dim by n_heads, n_heads by n_kv_heads); "
                          "params.json is damaged")
    vocab = raw.get("vocab_size")
    norm_eps = _float(raw, "norm_eps", path)
    if norm_eps is None:
        raise ParamsError(f"{path} lacks 'norm_eps'; is this a LLaMA params.json?")
    scaled = raw.get("use_scaled_rope", False)
    if not isinstance(scaled, bool):
        raise ParamsError(f"{path}: use_scaled_rope is {_shown(scaled)}, expected true or false")
    for key in ("max_seq_len", "max_batch_size"):
        _int(raw, key, path)
    return MetaParams(
        dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        # LLaMA 1/2 write -1: the size comes from the embedding.
        vocab_size=None if vocab == -1 else _int(raw, "vocab_size", path),
        multiple_of=_int(raw, "multiple_of", path),
        ffn_dim_multiplier=_float(raw, "ffn_dim_multiplier", path),
        norm_eps=norm_eps,
        rope_theta=_float(raw, "rope_theta", path),
        use_scaled_rope=scaled,
        unknown_keys=tuple(sorted(set(raw) - KNOWN_KEYS)),
        raw=raw,
    )
