"""The spatial memory bank: clean chunks a session generated, kept with their poses, and brought
back by camera geometry when the player returns to a place (design.md §9; WorldMem,
HY-WorldPlay, Matrix-Game 3.0 store latents and score by field-of-view overlap).

**Entries.** One per chunk: its normalised latents ``(k, C, h, w)``, encoded actions ``(k, A)``,
poses ``(k, 4, 4)``, the index of its first frame in the session, and ``state``, what the pose
does not carry (the built-in world's day or night); an entry is only retrieved for a query in
the same state. A chunk is placed by its *anchor*, the pose of its newest frame.

**Score.** A fixed point set fills the query camera's view up to ``radius_m`` (a Halton
sequence over the image and the distance, no random numbers: retrieval is deterministic, so
sessions replay bit for bit). An entry covers a point when its anchor camera sees it (in front,
inside the image, within ``radius_m``). Candidates are the entries whose anchor lies within
``radius_m`` of the query's (found through a spatial hash of ``radius_m`` cells, so the cost
follows the entries near the player, not the bank's size), older than ``before_frame`` and in
the query's state. When more than ``shortlist`` remain (a player who has stayed in one area for
a long time), a coarse pass counts their coverage of the first ``coarse_points`` points of the
set (a Halton prefix covers the view evenly too) and keeps the ``shortlist`` that cover most. Top-k is greedy and
diversity-aware: each pick scores the share of points it covers that no earlier pick covers,
minus ``distance_weight`` times its distance over ``radius_m``; picking stops at ``top_k`` or
when the best score falls below ``min_score``. With ``discount_window`` the chunks already in
the context (``context_c2w``) count as covering what they show too, so nothing is retrieved while
the window shows the view and memory costs its model pass only where it adds what the context
lacks; without it (the default) a place seen long ago is brought back even while the window
shows it, which is what holds a still player's view: the window holds the model's own latest
frames, the entry an older, less drifted view of the same place (docs/memory.md, "The anchor").
The score is invariant to a global rigid motion of every pose (tested).

**Bound.** At most ``capacity`` entries, one per *place*: position cell (``cell_m``), heading
sector (``heading_bins`` of the yaw) and state. A new chunk whose place already has an entry is
dropped with ``keep="first"`` (the default: the first view of a place, for a session's start the
true frames, stays) and replaces it with ``keep="newest"``; a chunk for a new place, when the
bank is full, takes the slot of the least recently retrieved entry (never retrieved: the oldest
added).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from worldsim.core.errors import WorldsimError

KEEP = ("first", "newest")  # MemoryConfig.keep: which chunk a place keeps


@dataclass(frozen=True)
class MemoryConfig:
    """How a session's memory bank keeps and scores entries (module docstring)."""

    capacity: int = 4096
    top_k: int = 1
    # 0.1, not the earlier 0.3: at 0.3 the revisit evaluation's loops and turns retrieved nothing
    # (the window, discounted then, shows part of each returning view); at 0.1 they do, return
    # frames gain and the other frames lose nothing (docs/memory.md)
    min_score: float = 0.1
    radius_m: float = 20.0
    num_points: int = 256
    cell_m: float = 2.0
    heading_bins: int = 8
    distance_weight: float = 0.1
    shortlist: int = 32  # more candidates than this: a coarse pass keeps this many (module docstring)
    coarse_points: int = 16  # view points of the coarse pass (the first of the Halton set)
    state_key: str = "l"  # a key whose presses flip the state the pose does not carry ("": none)
    keep: str = "first"  # which chunk a place keeps: "first" (the oldest view) or "newest" (module docstring)
    discount_window: bool = False  # True: what the context's window shows counts as covered (module docstring)
    # The engine: False, nothing is retrieved while the window or the chunk being made holds a
    # press of state_key. A retrieved chunk, in the state after the press, takes the positions
    # before the window, where the model reads it as the state the press flipped from (a 1-step
    # student then flipped the light back on the seventh frame of a held press; docs/memory.md,
    # "Presses"); True: retrieval goes on across a press; None (the default): the engine decides
    # by the checkpoint, False for a student trained with presses that read no memory after them
    # (distill.still_press_prob), True for the others (v4 at 2 steps needs the retrieved view to
    # make some of its toggles)
    retrieve_across_press: bool | None = None
    # The engine (cached context): a retrieved chunk that the last chunk with memory had too, at
    # the same camera reference (a still player), keeps that chunk's keys and values instead of a
    # new clean pass (worldsim.inference.rollout, "memory_reuse"); False: a pass for every retrieval
    reuse: bool = True

    def __post_init__(self) -> None:
        counts = (self.capacity, self.top_k, self.num_points, self.heading_bins, self.shortlist, self.coarse_points)
        if min(counts) < 1 or self.coarse_points > self.num_points:
            raise WorldsimError(
                f"memory capacity, top_k, num_points, heading_bins, shortlist and coarse_points must be >= 1 "
                f"(coarse_points <= num_points), got {counts}"
            )
        if self.keep not in KEEP:
            raise WorldsimError(f"memory keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if not math.isfinite(self.min_score):
            raise WorldsimError(f"memory min_score must be a finite number, got {self.min_score}")
        if self.radius_m <= 0 or self.cell_m <= 0 or self.distance_weight < 0:
            raise WorldsimError(
                f"memory radius_m and cell_m must be > 0 and distance_weight >= 0, got "
                f"{self.radius_m}, {self.cell_m}, {self.distance_weight}"
            )


def with_settings(cfg: MemoryConfig, **given: Any) -> MemoryConfig:
    """``cfg`` with each setting of ``given`` that is not None (a command line's unset options
    leave the bank's own); checked as any :class:`MemoryConfig` is."""
    return replace(cfg, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True)
class MemoryHit:
    """A retrieved entry: its slot in the bank, its score (coverage gain minus distance term) and
    the session index of its first frame (the slot may hold another chunk later)."""

    slot: int
    score: float
    frame: int


def _halton(n: int, base: int) -> torch.Tensor:
    """The first ``n`` terms of the van der Corput sequence in ``base`` (skipping 0), float64."""
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        f, r, k = 1.0, 0.0, i + 1
        while k:
            f /= base
            r += f * (k % base)
            k //= base
        out[i] = r
    return out


def view_points(
    intrinsics: torch.Tensor, frame_size: tuple[int, int], radius_m: float, num_points: int
) -> torch.Tensor:
    """``(N, 3)`` float64 camera-frame points (OpenCV axes) filling the view up to ``radius_m``
    from the camera, uniform in volume: pixel position and distance from a Halton sequence
    (bases 2, 3, 5), distance ``radius_m * s^(1/3)``. The same for every call."""
    h, w = frame_size
    u, v, s = (_halton(num_points, b) for b in (2, 3, 5))
    k = intrinsics.double()
    x = (u * w - k[0, 2]) / k[0, 0]
    y = (v * h - k[1, 2]) / k[1, 1]
    rays = torch.stack([x, y, torch.ones_like(x)], 1)
    return rays / rays.norm(dim=1, keepdim=True) * (radius_m * s.pow(1 / 3))[:, None]


def _image_scaled(intrinsics: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """``S K`` (float64): the intrinsics followed by the scaling of pixels to [-1, 1] across the image."""
    h, w = frame_size
    scale = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], dtype=torch.float64)
    return scale @ intrinsics.double()


def view_rows(w2c: torch.Tensor, intrinsics: torch.Tensor, frame_size: tuple[int, int]) -> np.ndarray:
    """``(3, M, 3)`` float32: the rotation part of each camera's projection, ``S K R`` for
    ``w2c (M, 4, 4)`` with ``intrinsics (3, 3)`` pixels of ``frame_size`` frames, stored row by row
    (every camera's first row, then every second, then every third) for :meth:`PlacedPoints.seen_by`.
    ``S`` scales pixels to [-1, 1] across the image, so a camera-centred point ``Y = X - C`` maps
    to ``(a z, b z, z)``: ``z`` the depth, ``a = (u - W/2) / (W/2)``, ``b = (v - H/2) / (H/2)``.
    Rotations only: the translation is made per query from the cameras' centres relative to the
    query (small numbers, so float32 stays exact enough anywhere in the world)."""
    return (_image_scaled(intrinsics, frame_size) @ w2c.double()[:, :3, :3]).transpose(0, 1).float().numpy()


def world_projections(w2c: torch.Tensor, intrinsics: torch.Tensor, frame_size: tuple[int, int]) -> np.ndarray:
    """``(4, M, 4)`` float32, row by row: each camera's whole projection ``S K [R | t]``
    (:func:`view_rows`) and ``(-2 C, |C|^2)``, so one product with a homogeneous world point
    ``(X, 1)`` gives ``(a z, b z, z, |X - C|^2 - |X|^2)`` with no per-query work. In world
    coordinates, so float32 moves the reach boundary by centimetres kilometres from the origin:
    used only to rank candidates in the coarse pass (:meth:`PlacedPoints.ranked_by`), never to
    score them."""
    w2c = w2c.double()
    out = np.zeros((4, len(w2c), 4))
    out[:3] = (_image_scaled(intrinsics, frame_size) @ w2c[:, :3]).transpose(0, 1).numpy()
    centre = camera_centres(w2c)
    out[3, :, :3] = -2 * centre
    out[3, :, 3] = (centre * centre).sum(1)
    return out.astype(np.float32)


class PlacedPoints:
    """A query camera's view ``points (N, 3)`` (camera frame, :func:`view_points`) placed in the
    world by ``query_anchor (4, 4)`` (camera-to-world, float64), ready to be tested against many
    candidate cameras (:meth:`seen_by`); made once per query. Everything is relative to the
    query's position ``origin``, so float32 holds the geometry to a fraction of a millimetre
    wherever the player has walked (tested kilometres from the world's origin)."""

    def __init__(self, points: torch.Tensor, query_anchor: torch.Tensor, radius_m: float):
        self.origin = query_anchor[:3, 3].double().numpy()
        local = (points.double() @ query_anchor[:3, :3].T.double()).numpy()  # (N, 3) X - origin
        self.local = local.astype(np.float32)
        self.reach = (radius_m * radius_m - (local * local).sum(1)).astype(np.float32)  # r^2 - |x|^2 per point
        world = local + self.origin
        self.world = torch.from_numpy(np.concatenate([world, np.ones((len(world), 1))], 1).astype(np.float32))
        self.world_reach = (radius_m * radius_m - (world * world).sum(1)).astype(np.float32)

    def seen_by(self, rows: np.ndarray, centres: np.ndarray, points: int | None = None) -> np.ndarray:
        """``(M, n)`` bool: which of the first ``points`` (all by default) each candidate camera
        sees: in front, inside its image, within ``radius_m`` of it. ``rows (3, M, 3)`` float32:
        the candidates' :func:`view_rows`; ``centres (M, 3)`` float64 their positions.

        With ``c`` a candidate's centre relative to the origin and ``x`` a point's, one float32
        GEMM of ``[S K R | -S K R c]`` and ``(-2 c, |c|^2)`` with ``(x, 1)`` gives ``(a z, b z, z,
        |x - c|^2 - |x|^2)``; in front and inside the image is ``max(|a z|, |b z|) < z`` (the
        image's open interior; ``z > 0`` follows), within reach is ``|x - c|^2 <= r^2``. The GEMM
        runs in torch (one thread pool), the comparisons in numpy (several times faster than
        torch's for boolean arrays this size); the same answer every run."""
        m = rows.shape[1]
        local, reach = self.local[:points], self.reach[:points]
        c = (centres - self.origin).astype(np.float32)  # (M, 3)
        packed = np.empty((4, m, 4), np.float32)
        packed[:3, :, :3] = rows
        packed[:3, :, 3] = -np.einsum("rmj,mj->rm", rows, c)
        packed[3, :, :3] = -2 * c
        packed[3, :, 3] = np.einsum("mj,mj->m", c, c)
        homog = torch.from_numpy(np.concatenate([local, np.ones((len(local), 1), np.float32)], 1))
        return _inside(torch.from_numpy(packed).view(4 * m, 4) @ homog.T, reach)

    def ranked_by(self, packed: np.ndarray, points: int | None = None) -> np.ndarray:
        """:meth:`seen_by` for ranking only, from the candidates' :func:`world_projections`
        ``packed (4, M, 4)``: one GEMM with nothing made per query or candidate (the coarse pass;
        exact near the world's origin, boundaries off by centimetres kilometres from it)."""
        m = packed.shape[1]
        return _inside(torch.from_numpy(packed).view(4 * m, 4) @ self.world[:points].T, self.world_reach[:points])


def _inside(product: torch.Tensor, reach: np.ndarray) -> np.ndarray:
    """``(M, n)`` bool from the ``(4 M, n)`` product of packed rows with homogeneous points:
    ``max(|a z|, |b z|) < z`` (in front, inside the image's open interior) and ``d <= reach``."""
    a, b, z, d = product.numpy().reshape(4, -1, product.shape[1])
    return (np.maximum(np.abs(a), np.abs(b)) < z) & (d <= reach)


def camera_centres(w2c: torch.Tensor) -> np.ndarray:
    """``(M, 3)`` float64 camera centres ``C = -R^T t`` of ``w2c (M, 4, 4)``."""
    w2c = w2c.double()
    return (-(w2c[:, :3, :3].transpose(1, 2) @ w2c[:, :3, 3:]).squeeze(2)).numpy()


def view_coverage(
    points: torch.Tensor,
    query_anchor: torch.Tensor,
    cand_w2c: torch.Tensor,
    intrinsics: torch.Tensor,
    frame_size: tuple[int, int],
    radius_m: float,
) -> torch.Tensor:
    """``(M, N)`` bool: which of the query camera's view ``points (N, 3)`` (camera frame,
    :func:`view_points`) each candidate camera ``cand_w2c (M, 4, 4)`` sees: in front, inside the
    image of ``frame_size`` and ``intrinsics (3, 3)``, within ``radius_m``. ``query_anchor (4,
    4)`` camera-to-world. Inputs float64 (:class:`PlacedPoints` says how it is computed)."""
    placed = PlacedPoints(points, query_anchor, radius_m)
    return torch.from_numpy(placed.seen_by(view_rows(cand_w2c, intrinsics, frame_size), camera_centres(cand_w2c)))


class MemoryBank:
    """One session's memory (module docstring). ``intrinsics (3, 3)`` pixels of ``frame_size``
    frames (the checkpoint's). Entries are stored in preallocated buffers on the first
    :meth:`add`, in that chunk's dtype and device."""

    def __init__(self, cfg: MemoryConfig, intrinsics: torch.Tensor, frame_size: tuple[int, int]):
        self.cfg, self.frame_size = cfg, frame_size
        self.intrinsics = intrinsics.double().cpu()
        self.points = view_points(self.intrinsics, frame_size, cfg.radius_m, cfg.num_points)
        self.latents: torch.Tensor | None = None  # (capacity, k, C, h, w)
        self.actions: torch.Tensor | None = None  # (capacity, k, A)
        self.c2w = torch.zeros(cfg.capacity, 0, 4, 4, dtype=torch.float64)  # (capacity, k, 4, 4) once known
        self.anchor = torch.zeros(cfg.capacity, 4, 4, dtype=torch.float64)  # each entry's newest pose
        self.anchor_w2c = torch.zeros(cfg.capacity, 4, 4, dtype=torch.float64)
        # Derived from the anchors, for the reading path (numpy gathers rows several times faster).
        self.position = np.zeros((cfg.capacity, 3))  # anchor positions (camera centres), float64
        self.rows = np.zeros((3, cfg.capacity, 3), np.float32)  # the anchors' view_rows
        self.packed = np.zeros((4, cfg.capacity, 4), np.float32)  # their world_projections (coarse pass)
        self.frame = torch.full((cfg.capacity,), -1, dtype=torch.int64)  # first frame; -1: a free slot
        self.state = torch.zeros(cfg.capacity, dtype=torch.int64)
        self.last_used = torch.zeros(cfg.capacity, dtype=torch.int64)  # retrieval clock of the last use
        self.clock = 0  # counts adds and retrievals: the order "least recently retrieved" reads
        self._place: dict[tuple[int, int, int, int, int], int] = {}  # position cell, heading sector, state -> slot
        self._hash: dict[tuple[int, int, int], set[int]] = {}  # radius_m cell -> slots
        self._hash_arrays: dict[tuple[int, int, int], np.ndarray] = {}  # the same as arrays, made when read

    def __len__(self) -> int:
        return int((self.frame >= 0).sum())

    # -- geometry ------------------------------------------------------------------------------
    def _anchor(self, c2w: torch.Tensor) -> torch.Tensor:
        return c2w[-1].double().cpu()

    def _hash_cell(self, pos: torch.Tensor) -> tuple[int, int, int]:
        c = torch.floor(pos / self.cfg.radius_m).long().tolist()
        return (c[0], c[1], c[2])

    def _place_key(self, anchor: torch.Tensor, state: int) -> tuple[int, int, int, int, int]:
        cell = torch.floor(anchor[:3, 3] / self.cfg.cell_m).long().tolist()
        fwd = anchor[:3, 2]
        yaw = math.atan2(float(fwd[0]), float(fwd[1])) % (2 * math.pi)  # z-up world, yaw 0 along +y
        sector = int(yaw / (2 * math.pi) * self.cfg.heading_bins) % self.cfg.heading_bins
        return (cell[0], cell[1], cell[2], sector, state)

    # -- writing ---------------------------------------------------------------------------------
    def add(self, latents: torch.Tensor, actions: torch.Tensor, c2w: torch.Tensor, frame: int, state: int = 0) -> int:
        """Keep one clean chunk: ``latents (k, C, h, w)``, ``actions (k, A)``, ``c2w (k, 4, 4)``,
        the index of its first frame and its ``state`` -> the slot it took, or -1 when its place
        keeps an earlier entry (``keep="first"``; bound rules in the module docstring)."""
        if latents.ndim != 4 or actions.shape[0] != latents.shape[0] or c2w.shape != (latents.shape[0], 4, 4):
            raise WorldsimError(
                f"a memory entry is one chunk: latents (k, C, h, w), actions (k, A), c2w (k, 4, 4); got "
                f"{tuple(latents.shape)}, {tuple(actions.shape)}, {tuple(c2w.shape)}"
            )
        if self.latents is None or self.actions is None:
            n = self.cfg.capacity
            self.latents = latents.new_zeros((n, *latents.shape))
            self.actions = actions.new_zeros((n, *actions.shape))
            self.c2w = torch.zeros(n, c2w.shape[0], 4, 4, dtype=torch.float64)
        elif self.latents.shape[1:] != latents.shape or self.actions.shape[1:] != actions.shape:
            raise WorldsimError(
                f"this bank holds chunks {tuple(self.latents.shape[1:])} with actions {tuple(self.actions.shape[1:])}, "
                f"got {tuple(latents.shape)} and {tuple(actions.shape)}"
            )
        anchor = self._anchor(c2w)
        slot = self._place.get(self._place_key(anchor, state))
        if slot is not None and self.cfg.keep == "first":
            return -1
        if slot is None:
            free = (self.frame < 0).nonzero()
            if len(free):
                slot = int(free[0])
            else:  # full: the least recently retrieved entry goes (ties: the lowest slot)
                slot = int(torch.argmin(self.last_used))
        self._remove(slot)
        self.clock += 1
        self.latents[slot] = latents
        self.actions[slot] = actions
        self.c2w[slot] = c2w.double().cpu()
        self.anchor[slot] = anchor
        self.anchor_w2c[slot] = torch.linalg.inv(anchor)
        self.frame[slot], self.state[slot], self.last_used[slot] = frame, state, self.clock
        self._index(slot)
        return slot

    def _index(self, slot: int) -> None:
        """Enter a filled slot in the place index and the spatial hash and derive its reading
        arrays (from its stored anchor)."""
        anchor = self.anchor[slot]
        self.position[slot] = anchor[:3, 3].numpy()
        self.packed[:, slot] = world_projections(self.anchor_w2c[slot, None], self.intrinsics, self.frame_size)[:, 0]
        self.rows[:, slot] = self.packed[:3, slot, :3]  # its view_rows, kept contiguous for the gathers
        self._place[self._place_key(anchor, int(self.state[slot]))] = slot
        cell = self._hash_cell(anchor[:3, 3])
        self._hash.setdefault(cell, set()).add(slot)
        self._hash_arrays.pop(cell, None)

    def _remove(self, slot: int) -> None:
        if self.frame[slot] < 0:
            return
        anchor = self.anchor[slot]
        self._place.pop(self._place_key(anchor, int(self.state[slot])), None)
        cell = self._hash_cell(anchor[:3, 3])
        self._hash[cell].discard(slot)
        self._hash_arrays.pop(cell, None)
        if not self._hash[cell]:
            del self._hash[cell]
        self.frame[slot] = -1

    # -- reading -----------------------------------------------------------------------------------
    def candidates(self, query_c2w: torch.Tensor, before_frame: int, state: int) -> torch.Tensor:
        """``(M,)`` int64 slots that may be retrieved for a chunk with poses ``query_c2w (k, 4, 4)``:
        anchors within ``radius_m`` of the query's anchor, every frame before ``before_frame``,
        in ``state``; in slot order."""
        anchor = self._anchor(query_c2w)[:3, 3]
        cx, cy, cz = self._hash_cell(anchor)
        q = anchor.numpy()
        cells = [(cx + dx, cy + dy, cz + dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]
        arrays = [self._cell_slots(c) for c in cells if c in self._hash]
        if not arrays:
            return torch.zeros(0, dtype=torch.int64)
        slots = np.concatenate(arrays)
        d = np.take(self.position, slots, axis=0) - q
        slots = slots[np.einsum("ij,ij->i", d, d) <= self.cfg.radius_m**2]
        keep = np.take(self.frame.numpy(), slots) + self.c2w.shape[1] <= before_frame
        keep &= np.take(self.state.numpy(), slots) == state
        return torch.from_numpy(np.sort(slots[keep]))

    def _cell_slots(self, cell: tuple[int, int, int]) -> np.ndarray:
        """The slots of a hash cell as an int64 array, kept until the cell changes."""
        if cell not in self._hash_arrays:
            self._hash_arrays[cell] = np.fromiter(self._hash[cell], np.int64, len(self._hash[cell]))
        return self._hash_arrays[cell]

    def coverage(self, query_c2w: torch.Tensor, slots: torch.Tensor, points: int | None = None) -> torch.Tensor:
        """``(M, N)`` bool: which of the query's view points (the first ``points``; all by
        default) each entry's anchor camera sees."""
        placed = PlacedPoints(self.points, self._anchor(query_c2w), self.cfg.radius_m)
        return torch.from_numpy(self._seen(placed, slots.numpy(), points))

    def distance_penalty(self, query_c2w: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``(M,)`` float64: ``distance_weight`` x anchor distance / ``radius_m`` (module docstring)."""
        return torch.from_numpy(self._penalty(self._anchor(query_c2w)[:3, 3].numpy(), slots.numpy()))

    def _seen(self, placed: PlacedPoints, slots: np.ndarray, points: int | None = None) -> np.ndarray:
        """:meth:`PlacedPoints.seen_by` for the entries at ``slots``."""
        return placed.seen_by(np.take(self.rows, slots, axis=1), np.take(self.position, slots, axis=0), points)

    def _penalty(self, position: np.ndarray, slots: np.ndarray) -> np.ndarray:
        d = np.take(self.position, slots, axis=0) - position
        return self.cfg.distance_weight * np.sqrt(np.einsum("ij,ij->i", d, d)) / self.cfg.radius_m

    def scores(self, query_c2w: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``(M,)`` float64 single-entry scores: coverage minus the distance term (module docstring)."""
        return self.coverage(query_c2w, slots).double().mean(1) - self.distance_penalty(query_c2w, slots)

    def retrieve(
        self, query_c2w: torch.Tensor, before_frame: int, state: int = 0, context_c2w: torch.Tensor | None = None
    ) -> list[MemoryHit]:
        """The entries to show the model before generating a chunk with poses ``query_c2w (k, 4,
        4)``: at most ``top_k``, best first, each scoring at least ``min_score`` (greedy,
        diversity-aware, after the coarse pass: module docstring); ``context_c2w (W, 4, 4)``: the
        anchors of the chunks the context holds, whose view counts as covered with
        ``discount_window`` (ignored without). Marks the hits used for the eviction rule."""
        slots = self.candidates(query_c2w, before_frame, state).numpy()
        if not len(slots):
            return []
        anchor = self._anchor(query_c2w)
        placed = PlacedPoints(self.points, anchor, self.cfg.radius_m)
        if len(slots) > self.cfg.shortlist:
            coarse = placed.ranked_by(np.take(self.packed, slots, axis=1), self.cfg.coarse_points).sum(1)
            best_first = np.argsort(-coarse, kind="stable")  # ties: the lowest slot first
            slots = slots[np.sort(best_first[: self.cfg.shortlist])]
        seen = self._seen(placed, slots)
        penalty = self._penalty(anchor[:3, 3].numpy(), slots)
        covered = np.zeros(seen.shape[1], dtype=bool)
        if self.cfg.discount_window and context_c2w is not None and len(context_c2w):
            w2c = torch.linalg.inv(context_c2w.double().cpu())
            shown = placed.seen_by(view_rows(w2c, self.intrinsics, self.frame_size), camera_centres(w2c))
            covered = np.any(shown, axis=0)
        hits: list[MemoryHit] = []
        self.clock += 1
        for _ in range(self.cfg.top_k):
            gain = (seen & ~covered).mean(1) - penalty
            best = int(np.argmax(gain))  # ties: the lowest slot
            if gain[best] < self.cfg.min_score:
                break
            slot = int(slots[best])
            hits.append(MemoryHit(slot, float(gain[best]), int(self.frame[slot])))
            self.last_used[slot] = self.clock
            covered |= seen[best]
        return hits

    def entries(self, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stored chunks at ``slots``, one after another: latents ``(m * k, C, h, w)``,
        actions ``(m * k, A)``, c2w ``(m * k, 4, 4)`` float32."""
        if self.latents is None or self.actions is None or any(self.frame[s] < 0 for s in slots):
            raise WorldsimError(f"memory slots {slots} are not all filled")
        idx = torch.tensor(slots, dtype=torch.int64)
        return self.latents[idx].flatten(0, 1), self.actions[idx].flatten(0, 1), self.c2w[idx].flatten(0, 1).float()

    # -- sessions ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every buffer and the clock, as tensors (for ``save_session``); an empty bank's latents
        and actions are absent."""
        out = {
            "c2w": self.c2w,
            "anchor": self.anchor,
            "anchor_w2c": self.anchor_w2c,
            "frame": self.frame,
            "state": self.state,
            "last_used": self.last_used,
            "clock": torch.tensor(self.clock, dtype=torch.int64),
        }
        if self.latents is not None and self.actions is not None:
            out.update(latents=self.latents, actions=self.actions)
        return out

    def config_dict(self) -> dict[str, float | int]:
        """The config, for the session file's JSON part."""
        return asdict(self.cfg)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s output; ``WorldsimError`` in one line for a state that is
        incomplete or does not fit this bank (another capacity, chunk or point set)."""
        n = self.cfg.capacity
        try:
            frame, c2w, anchor = state["frame"], state["c2w"], state["anchor"]
            w2c = state["anchor_w2c"]
            fits = frame.shape == (n,) and anchor.shape == w2c.shape == (n, 4, 4) and c2w.shape[0] == n
            fits &= state["state"].shape == (n,) and state["last_used"].shape == (n,)
            has = "latents" in state
            if has:
                fits &= state["latents"].shape[0] == n and state["actions"].shape[0] == n
                fits &= state["latents"].shape[1] == c2w.shape[1] == state["actions"].shape[1]
            clock = int(state["clock"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise WorldsimError(f"the saved memory bank is incomplete ({e})") from None
        if not fits:
            raise WorldsimError(
                f"the saved memory bank does not fit this one (capacity {n}, saved frame index {tuple(frame.shape)})"
            )
        if not bool(torch.isfinite(c2w).all() and torch.isfinite(anchor).all()):
            raise WorldsimError("the saved memory bank holds non-finite poses")
        self.frame, self.c2w, self.anchor = frame.clone(), c2w.clone().double(), anchor.clone().double()
        self.anchor_w2c = w2c.clone().double()
        self.state, self.last_used, self.clock = state["state"].clone(), state["last_used"].clone(), clock
        self.latents = state["latents"].clone() if has else None
        self.actions = state["actions"].clone() if has else None
        self._place, self._hash, self._hash_arrays = {}, {}, {}
        for slot in (self.frame >= 0).nonzero().flatten().tolist():
            self._index(slot)
