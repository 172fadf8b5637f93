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


def teacher_forcing_mask(
    chunk_of_token: torch.Tensor, window_chunks: int | None = None, noisy_chunk_of_token: torch.Tensor | None = None
) -> torch.Tensor:
    """Mask over ``[clean | noisy]`` from per-token chunk ids of each half (the noisy half's ids
    default to the clean half's: the same chunks).

    Clean chunk b sees clean chunks <= b; noisy chunk b sees its own noisy chunk and clean
    chunks < b (reference.md §2). With ``window_chunks = W`` each sees only the clean chunks
    a rolling KV cache of W chunks holds: clean ``b - W .. b``, noisy ``b - W .. b - 1`` (the
    scores of the student stages read its own rollouts this way). Returns ``(Lc + Ln, Lc + Ln)``
    bool.
    """
    noisy = chunk_of_token if noisy_chunk_of_token is None else noisy_chunk_of_token
    clean_clean = chunk_mask(chunk_of_token, chunk_of_token, window_chunks)
    noisy_clean = chunk_mask(noisy - 1, chunk_of_token, None if window_chunks is None else window_chunks - 1)
    noisy_noisy = noisy[:, None] == noisy[None, :]
    top = torch.cat([clean_clean, clean_clean.new_zeros(len(chunk_of_token), len(noisy))], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)


def with_memory_mask(
    mask: torch.Tensor,
    chunk_of_token: torch.Tensor,
    noisy_chunk_of_token: torch.Tensor,
    memory_reader_of_token: torch.Tensor,
    window_chunks: int,
) -> torch.Tensor:
    """A windowed :func:`teacher_forcing_mask` ``mask (Lc + Ln, Lc + Ln)`` over ``[clean | noisy]``
    extended by ``Lm`` tokens of retrieved chunks after them: one copy of a retrieved chunk per
    chunk that reads it, ``memory_reader_of_token (Lm,)`` the id of each copy's reader. As the
    rollout's KV cache gives a retrieved chunk (``worldsim.inference.kv_cache``, ``use_memory``):
    the reader's clean and noisy tokens see their copy in place of the oldest chunk of their window
    (``b - W``, hidden), and a copy sees itself alone (a retrieved chunk was the oldest of its
    training clip). Returns ``(Lc + Ln + Lm, Lc + Ln + Lm)`` bool."""
    rows = torch.cat([chunk_of_token, noisy_chunk_of_token])
    reads = torch.isin(rows, memory_reader_of_token)
    hidden = reads[:, None] & (chunk_of_token[None, :] == rows[:, None] - window_chunks)
    lc = len(chunk_of_token)
    seen = torch.cat([mask[:, :lc] & ~hidden, mask[:, lc:]], dim=1)
    to_copy = rows[:, None] == memory_reader_of_token[None, :]
    copies = memory_reader_of_token[:, None] == memory_reader_of_token[None, :]
    bottom = torch.cat([copies.new_zeros(len(copies), len(rows)), copies], dim=1)
    return torch.cat([torch.cat([seen, to_copy], dim=1), bottom], dim=0)
