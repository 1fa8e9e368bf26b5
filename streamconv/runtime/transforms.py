"""What happens to rows between the rank file and the output, beyond a cast.

Why q and k are permuted: Meta's rotary embedding rotates interleaved pairs (x0, x1), (x2, x3)...
of each head, HF's rotates the two halves (x0, x_{d/2}), ... The permute reorders each head's
rows so HF's rotation of the converted weights equals Meta's rotation of the originals; it is
the same reordering as transformers' convert_llama_weights_to_hf.py, applied per head (k with
its own heads, so grouped-query attention works). The table marks which tensors get it
(model/tensor_table.py, Transform.ROTARY).
"""

from __future__ import annotations

from typing import Any


def permute_rotary_into(dst: Any, src: Any, head_dim: int) -> None:
    """dst[rows] = src rows reordered from Meta's interleaved pairs to HF's halves, per head.

    Equals transformers' permute(w) = w.view(h, d/2, 2, C).transpose(1, 2).reshape(h*d, C);
    src and dst hold whole heads, as numpy arrays (integer views of one width: a pure move) or
    torch tensors (the assignment also casts to dst's dtype). dst is whole output rows, so
    contiguous, and its reshape is a view of it in both libraries.
    """
    n_rows, n_cols = src.shape
    heads = n_rows // head_dim
    dst.reshape(heads, 2, head_dim // 2, n_cols)[...] = (
        src.reshape(heads, head_dim // 2, 2, n_cols).swapaxes(1, 2))
