"""The one attention function, and the block-causal masks used in training.

flash-attn is used only on CUDA, when installed, and when no mask is needed (inference: a chunk
attends to its whole cache and itself). Everything else goes through PyTorch SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional GPU dependency: `pip install worldsim[gpu]`
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore[import-not-found]
except ImportError:  # the normal case on CPU machines
    _flash_attn_func = None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``q (B, H, Lq, D)``, ``k, v (B, H, Lk, D)``, ``mask (Lq, Lk)`` bool (True = may attend)."""
    if mask is None and _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        # flash-attn wants (B, L, H, D)
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def chunk_mask(
    q_chunk: torch.Tensor, k_chunk: torch.Tensor, window_chunks: int | None = None, sink: bool = False
) -> torch.Tensor:
    """Block-causal mask from per-token chunk ids: query chunk b sees key chunks j <= b.

    With ``window_chunks = W`` it sees only chunks ``b - W <= j <= b`` (plus chunk 0 when
    ``sink``): exactly what a rolling KV cache of W past chunks and a sink holds.
    """
    qb, kb = q_chunk[:, None], k_chunk[None, :]
    allowed = kb <= qb
    if window_chunks is not None:
        recent = qb - kb <= window_chunks
        if sink:
            recent = recent | (kb == 0)
        allowed = allowed & recent
    return allowed


def teacher_forcing_mask(chunk_of_token: torch.Tensor) -> torch.Tensor:
    """Mask over ``[clean | noisy]`` (each half with the same per-token chunk ids).

    Clean chunk b sees clean chunks <= b; noisy chunk b sees its own noisy chunk and clean
    chunks < b (reference.md §2). Returns ``(2L, 2L)`` bool.
    """
    qb, kb = chunk_of_token[:, None], chunk_of_token[None, :]
    clean_clean = kb <= qb
    noisy_clean = kb < qb
    noisy_noisy = kb == qb
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)
