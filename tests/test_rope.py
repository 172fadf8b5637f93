"""3-D RoPE against an independent per-axis computation, token by token."""

import math

import torch

from worldsim.model.rope import apply_rope, rope_angles, rope_dims, token_positions


def _reference_rope(x, frame_pos, rows, cols, base=10000.0):
    """Rotate each channel pair ``(2j, 2j+1)`` of each token by ``position_axis * freq``: the first
    ``d_t / 2`` pairs by the frame's time, the next ``d_s / 2`` by the token's row, the last by its
    column, with ``freq_i = base^(-2i / d_axis)`` inside each axis (RoFormer, per axis)."""
    d = x.shape[-1]
    d_t, d_r, d_c = rope_dims(d)
    out = x.clone()
    tok = 0
    for t in frame_pos.tolist():
        for r in range(rows):
            for c in range(cols):
                pair = 0
                for pos, dim in ((t, d_t), (r, d_r), (c, d_c)):
                    for i in range(dim // 2):
                        a = pos * base ** (-2 * i / dim)
                        x1, x2 = x[..., tok, 2 * pair], x[..., tok, 2 * pair + 1]
                        out[..., tok, 2 * pair] = x1 * math.cos(a) - x2 * math.sin(a)
                        out[..., tok, 2 * pair + 1] = x1 * math.sin(a) + x2 * math.cos(a)
                        pair += 1
                tok += 1
    return out


def test_rope_matches_an_independent_per_axis_rotation():
    rows, cols, head_dim = 2, 3, 12  # rows != cols, so swapped axes show
    frame_pos = torch.tensor([5, 6, 9])
    x = torch.randn(1, 2, len(frame_pos) * rows * cols, head_dim, dtype=torch.float64)
    got = apply_rope(x, rope_angles(token_positions(frame_pos, rows, cols), head_dim))
    torch.testing.assert_close(got, _reference_rope(x, frame_pos, rows, cols), rtol=1e-12, atol=1e-12)


def test_rope_scores_depend_only_on_position_differences():
    """Why cached keys stay valid: shifting every position by the same amount keeps q . k."""
    head_dim = 12
    q, k = torch.randn(1, 1, 6, head_dim, dtype=torch.float64), torch.randn(1, 1, 6, head_dim, dtype=torch.float64)
    pos = token_positions(torch.tensor([0, 1, 4]), 1, 2)
    shifted = pos + torch.tensor([100.0, 3.0, 7.0], dtype=torch.float64)
    s1 = apply_rope(q, rope_angles(pos, head_dim)) @ apply_rope(k, rope_angles(pos, head_dim)).transpose(-1, -2)
    s2 = apply_rope(q, rope_angles(shifted, head_dim)) @ apply_rope(k, rope_angles(shifted, head_dim)).transpose(-1, -2)
    torch.testing.assert_close(s1, s2, rtol=1e-9, atol=1e-9)


def test_shift_time_moves_rotated_keys_to_later_frames_and_nothing_else():
    """Keys rotated at frames ``t`` and turned by ``shift_time(.., s)`` are the keys rotated at
    ``t + s``, rows and columns as they were (the memory bank's kept passes, moved in time);
    bf16 keys are turned in float32, so they differ from the direct rotation by bf16's rounding
    of the result alone."""
    from worldsim.model.rope import shift_time

    rows, cols, head_dim = 2, 3, 12
    frame_pos = torch.tensor([5, 6])
    x = torch.randn(1, 2, len(frame_pos) * rows * cols, head_dim, dtype=torch.float64)
    at = lambda pos: apply_rope(x, rope_angles(token_positions(pos, rows, cols), head_dim))  # noqa: E731
    for s in (1, 7, 4000):
        torch.testing.assert_close(shift_time(at(frame_pos), s), at(frame_pos + s), rtol=1e-9, atol=1e-9)
    keys = at(frame_pos).to(torch.bfloat16)
    torch.testing.assert_close(
        shift_time(keys, 7).double(), shift_time(keys.double(), 7).to(torch.bfloat16).double(), rtol=0, atol=0
    )
