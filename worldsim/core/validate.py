"""The one validation layer for raw inputs at the public boundaries.

``Engine.step`` / ``reset``, the environments' ``step``, the dataset writer and reader, the
action encoders and the CLIs that read inputs from files all call these. Each check returns the
array in its canonical dtype or raises a one-line :class:`WorldsimError` that names the argument,
the expected form and the value found, e.g.::

    mouse must be finite pixels (4, 2); got nan at [1, 0]

Nothing non-finite or out of range gets past them, so nothing reaches the model or the pose; the
callers check before they change any state, so a refused input leaves a session as it was.
"""

from __future__ import annotations

import numpy as np

from worldsim.core.errors import WorldsimError

# How far a c2w's rotation may be from orthonormal: float32 poses carry ~1e-7 per entry, and a
# pose composed over a long session drifts a little more; a scaled or sheared matrix is far off.
RIGID_ATOL = 1e-3


def _shape_text(dims: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _numeric(name: str, value: object, expected: str) -> np.ndarray:
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged lists
        raise WorldsimError(f"{name} must be {expected}; got an array numpy cannot build ({e})") from None
    if a.dtype.kind not in "biuf":
        raise WorldsimError(f"{name} must be {expected}; got dtype {a.dtype} {a.shape}")
    return a


def _shape(name: str, a: np.ndarray, dims: tuple[int | str, ...], expected: str) -> None:
    """``dims``: an int is fixed, a label ("T") any size; raises on a mismatch."""
    ok = a.ndim == len(dims) and all(not isinstance(d, int) or a.shape[i] == d for i, d in enumerate(dims))
    if not ok:
        raise WorldsimError(f"{name} must be {expected}; got shape {a.shape}")


def _first_bad(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.argwhere(mask)[0]]


def _dims(rows: int | None, *rest: int) -> tuple[int | str, ...]:
    return (rows if rows is not None else "T", *rest)


def check_keys(name: str, keys: object, num_keys: int, rows: int | None = None) -> np.ndarray:
    """``keys (rows, num_keys)`` of 0/1 integers (bool, int or whole floats) -> uint8.

    ``rows`` None accepts any number of rows."""
    dims = _dims(rows, num_keys)
    expected = f"0/1 integers {_shape_text(dims)}"
    a = _numeric(name, keys, expected)
    _shape(name, a, dims, expected)
    return _zero_one(name, a, expected)


def _zero_one(name: str, a: np.ndarray, expected: str) -> np.ndarray:
    bad = (a != 0) & (a != 1)  # NaN compares unequal to both, so it is caught here too
    if bad.any():
        at = _first_bad(bad)
        raise WorldsimError(f"{name} must be {expected}; got {a[tuple(at)].item()!r} at {at}")
    return a.astype(np.uint8)


def check_key_row(name: str, keys: object, num_keys: int) -> np.ndarray:
    """One tick's ``keys (num_keys,)`` of 0/1 integers -> uint8."""
    expected = f"0/1 integers ({num_keys},)"
    a = _numeric(name, keys, expected)
    _shape(name, a, (num_keys,), expected)
    return _zero_one(name, a, expected)


def check_mouse(name: str, mouse: object, rows: int | None = None) -> np.ndarray:
    """``mouse (rows, 2)`` finite pixels -> float32 (``rows`` None: any)."""
    dims = _dims(rows, 2)
    expected = f"finite pixels {_shape_text(dims)}"
    a = _numeric(name, mouse, expected)
    _shape(name, a, dims, expected)
    return _finite(name, a, expected)


def _finite(name: str, a: np.ndarray, expected: str) -> np.ndarray:
    a = a.astype(np.float32)  # a float64 beyond float32's range becomes inf and is refused below
    bad = ~np.isfinite(a)
    if bad.any():
        at = _first_bad(bad)
        raise WorldsimError(f"{name} must be {expected}; got {float(a[tuple(at)])} at {at}")
    return a


def check_mouse_row(name: str, mouse: object) -> np.ndarray:
    """One tick's ``mouse (2,)`` finite pixels -> float32."""
    expected = "finite pixels (dx, dy) (2,)"
    a = _numeric(name, mouse, expected)
    _shape(name, a, (2,), expected)
    return _finite(name, a, expected)


def check_c2w(name: str, c2w: object, rows: int | None = None) -> np.ndarray:
    """``c2w (rows, 4, 4)`` finite rigid transforms (orthonormal rotation, det +1, last row
    0 0 0 1, within :data:`RIGID_ATOL`) -> float32."""
    dims = _dims(rows, 4, 4)
    expected = f"finite rigid camera-to-world poses {_shape_text(dims)}"
    a = _numeric(name, c2w, expected)
    _shape(name, a, dims, expected)
    a = _finite(name, a, expected)
    r = a[:, :3, :3].astype(np.float64)
    ortho = np.abs(r.transpose(0, 2, 1) @ r - np.eye(3)).max(axis=(1, 2)) if len(a) else np.zeros(0)
    det = np.linalg.det(r) if len(a) else np.zeros(0)
    last = np.abs(a[:, 3] - np.array([0, 0, 0, 1], np.float32)).max(axis=1) if len(a) else np.zeros(0)
    bad_rows = (ortho > RIGID_ATOL) | (np.abs(det - 1) > RIGID_ATOL) | (last > RIGID_ATOL)
    if bad_rows.any():
        i = int(np.argmax(bad_rows))
        raise WorldsimError(
            f"{name} must be {expected}; row {i} is not rigid "
            f"(|R^T R - I| {ortho[i]:.3g}, det {det[i]:.4g}, last row {a[i, 3].tolist()})"
        )
    return a


def check_frames(
    name: str, frames: object, frame_size: tuple[int, int] | None = None, rows: int | None = None
) -> np.ndarray:
    """``frames (rows, H, W, 3)`` uint8 with at least one frame; ``frame_size`` (H, W) when given."""
    h, w = frame_size if frame_size is not None else ("H", "W")
    dims: tuple[int | str, ...] = (rows if rows is not None else "T", h, w, 3)
    expected = f"uint8 frames {_shape_text(dims)}"
    a = _numeric(name, frames, expected)
    _shape(name, a, dims, expected)
    if a.dtype != np.uint8:
        raise WorldsimError(f"{name} must be {expected}; got dtype {a.dtype}")
    if len(a) == 0:
        raise WorldsimError(f"{name} must be {expected} with at least one frame; got 0 frames")
    return a
