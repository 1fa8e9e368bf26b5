"""params.json as Meta writes it, read into a frozen dataclass with Meta's own field names.

Only reading and type checking happen here; what the values mean for the output (family, vocab
size when Meta wrote -1, FFN size) is decided in detect.py, with the tensor shapes at hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamconv.errors import ParamsError

_REQUIRED_INT = ("dim", "n_layers", "n_heads")
KNOWN_KEYS = frozenset({
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
    "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope", "max_seq_len",
    "max_batch_size",
    # Llama 4 (model/llama4.py reads them; llama-models' llama4/args.py ModelArgs).
    "moe_args", "vision_args", "nope_layer_interval", "attention_chunk_size", "use_qk_norm",
    "ffn_exp", "rope_scaling_factor", "rope_high_freq_factor", "attn_temperature_tuning",
    "floor_scale", "attn_scale",
})


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


def _number(raw: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{path}: {key} is {value!r}, expected a number; fix params.json")
    if kind is int and float(value) != int(value):
        raise ParamsError(f"{path}: {key} is {value!r}, expected a whole number; fix params.json")
    return kind(value)


def read_params(input_dir: Path) -> MetaParams:
    path = input_dir / "params.json"
    if not path.is_file():
        raise ParamsError(f"{path} is missing; Meta's checkpoint folders ship it next to "
                          "consolidated.00.pth: copy it there")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParamsError(f"{path} is not valid JSON ({e}); download it again") from e
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} does not hold a JSON object; download it again")
    raw = raw.get("model", raw) if isinstance(raw.get("model"), dict) else raw
    for key in _REQUIRED_INT:
        value = _number(raw, key, int, path)
        if value is None or value <= 0:
            raise ParamsError(f"{path} lacks a positive {key!r}; is this a LLaMA params.json?")
    vocab = _number(raw, "vocab_size", int, path)
    norm_eps = _number(raw, "norm_eps", float, path)
    if norm_eps is None:
        raise ParamsError(f"{path} lacks 'norm_eps'; is this a LLaMA params.json?")
    scaled = raw.get("use_scaled_rope", False)
    if not isinstance(scaled, bool):
        raise ParamsError(f"{path}: use_scaled_rope is {scaled!r}, expected true or false")
    return MetaParams(
        dim=int(raw["dim"]),
        n_layers=int(raw["n_layers"]),
        n_heads=int(raw["n_heads"]),
        n_kv_heads=_number(raw, "n_kv_heads", int, path),
        vocab_size=vocab if vocab is not None and vocab > 0 else None,
        multiple_of=_number(raw, "multiple_of", int, path),
        ffn_dim_multiplier=_number(raw, "ffn_dim_multiplier", float, path),
        norm_eps=norm_eps,
        rope_theta=_number(raw, "rope_theta", float, path),
        use_scaled_rope=scaled,
        unknown_keys=tuple(sorted(set(raw) - KNOWN_KEYS)),
        raw=raw,
    )
