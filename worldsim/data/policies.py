"""Scripted policies: whole episodes of raw inputs for recording data and headless rollouts.

Most policies are open-loop: given an episode length, a key list, the controller settings and an
RNG, they return ``keys (T, K)`` uint8 and ``mouse (T, 2)`` float32. Row ``t`` takes frame t to
t+1; the last row is unused and left at zero. Because the built-in world's camera has no
collisions, an open-loop action list fixes the whole trajectory, so the same list replays
exactly anywhere. In a world with walls and momentum (DOOM) it does not: a
:class:`ClosedLoopPolicy` reads the pose as it goes and gives one row at a time, which the
recorder (``envs.record``) stores like any other; the stored rows replay the episode.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldsim.core.controller import CameraControllerConfig
from worldsim.core.errors import WorldsimError, unknown_name


@dataclass
class Actions:
    """One episode of raw inputs: ``keys (T, K)`` uint8 multi-hot, ``mouse (T, 2)`` float32 pixels."""

    keys: np.ndarray  # (T, K) uint8
    mouse: np.ndarray  # (T, 2) float32


POLICY_FPS = 15.0  # the frame rate the scripted policies draw their rows for (make_policy resamples)


class Policy(ABC):
    """A scripted policy, registered in :data:`POLICIES` under ``name``: open-loop (subclasses
    implement :meth:`actions`) unless it is a :class:`ClosedLoopPolicy`. ``key_names`` orders
    the key columns and ``controller`` converts degrees to mouse pixels (``mouse_deg_per_px``).
    Rows, durations and mouse pixels per row are drawn for a world at :data:`POLICY_FPS`;
    :func:`make_policy` resamples an open-loop policy to a faster controller (:class:`Resampled`).
    """

    name: str
    closed_loop = False  # True: rows come one at a time from the pose (ClosedLoopPolicy)

    def __init__(self, key_names: list[str], controller: CameraControllerConfig):
        self.key_names = list(key_names)
        self.ctrl = controller

    @abstractmethod
    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Raw inputs for ``num_frames`` frames (row t takes frame t to t + 1). ``attempt`` > 0
        is a redraw (``worldsim-record avoid_obstacles``) after the camera path hit something;
        a policy whose randomness alone cannot steer away uses it, the others draw anew from
        ``rng``."""

    def _empty(self, num_frames: int) -> Actions:
        return Actions(np.zeros((num_frames, len(self.key_names)), np.uint8), np.zeros((num_frames, 2), np.float32))

    def _hold(self, a: Actions, key: str, rows: slice | np.ndarray) -> None:
        if key in self.key_names:
            a.keys[rows, self.key_names.index(key)] = 1

    def _px_for_deg(self, deg: float) -> float:
        return deg / self.ctrl.mouse_deg_per_px


class ExplorePolicy(Policy):
    """Walks with momentum: yaw rate and pitch follow smooth random processes, forward mostly
    held, occasional strafes, backsteps, vertical moves and light toggles."""

    name = "explore"
    light_prob = 0.015  # chance per frame of pressing the light key: about once per 64-frame episode

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Momentum walk; yaw rate in pixels per frame (AR(1), sigma 1.2 px), pitch kept within +-15 degrees."""
        a = self._empty(num_frames)
        yaw_rate = 0.0  # pixels per frame
        pitch_deg = 0.0
        mode_left = 0
        mode = "forward"
        for t in range(num_frames - 1):
            if mode_left <= 0:
                mode = rng.choice(["forward", "forward", "forward", "strafe", "still", "back", "vertical"])
                mode_left = int(rng.integers(6, 30))
            mode_left -= 1
            yaw_rate = 0.9 * yaw_rate + rng.normal(0.0, 1.2)
            target_pitch = float(np.clip(pitch_deg + rng.normal(0, 1.0), -15, 15)) * 0.9
            dy = -self._px_for_deg(target_pitch - pitch_deg)  # dy > 0 looks down
            pitch_deg = target_pitch
            a.mouse[t] = (yaw_rate, dy)
            if mode == "forward":
                self._hold(a, "w", np.array([t]))
            elif mode == "back":
                self._hold(a, "s", np.array([t]))
            elif mode == "strafe":
                self._hold(a, "a" if (t // 10 + episode) % 2 else "d", np.array([t]))
            elif mode == "vertical":
                self._hold(a, "space" if (t // 10 + episode) % 2 else "left shift", np.array([t]))
            if rng.random() < self.light_prob:  # a discrete world action (lights) now and then
                self._hold(a, "l", np.array([t]))
        return a


class ExploreLightsPolicy(ExplorePolicy):
    """Explore with the light key pressed four times as often (about 4 toggles per 64 frames):
    as many night-to-day changes to learn from as day-to-night ones, and nights that end."""

    name = "explore_lights"
    light_prob = 0.06


class LookAroundPolicy(Policy):
    """Stands still and pans: smooth yaw sweeps left and right, gentle pitch."""

    name = "look_around"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Sinusoidal yaw sweep (amplitude 1.5-4 degrees per frame, period 40-90 frames), no keys."""
        a = self._empty(num_frames)
        t = np.arange(num_frames - 1)
        period = rng.uniform(40, 90)
        amp_px = self._px_for_deg(rng.uniform(1.5, 4.0))
        a.mouse[:-1, 0] = amp_px * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
        a.mouse[:-1, 1] = 0.3 * amp_px * np.sin(2 * math.pi * t / (1.7 * period)) * np.cos(2 * math.pi * t / period)
        return a


class GoAndReturnPolicy(Policy):
    """Walks forward (with a gentle turn), turns 180 degrees, walks back the same way, turns
    back: the end pose equals the start pose, so the last frames revisit the first view.
    A redraw (``attempt`` > 0) first turns to a random heading and starts from there."""

    name = "go_and_return"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Forward, 180-degree turn, back, 180-degree turn; ``attempt`` > 0 adds a random initial turn.

        Raises ``ValueError`` if ``w`` is not in ``key_names``.
        """
        a = self._empty(num_frames)
        n = num_frames - 1
        turn_frames = max(2, n // 8)
        curve_px = self._px_for_deg(rng.uniform(-1.0, 1.0))
        t = 0
        if attempt > 0:  # the spawn heading walks into something: face elsewhere first
            a.mouse[t : t + turn_frames, 0] = self._px_for_deg(rng.uniform(-180.0, 180.0) / turn_frames)
            t += turn_frames
        walk = (n - t - 2 * turn_frames) // 2
        a.keys[t : t + walk, self.key_names.index("w")] = 1
        a.mouse[t : t + walk, 0] = curve_px
        t += walk
        a.mouse[t : t + turn_frames, 0] = self._px_for_deg(180.0 / turn_frames)
        t += turn_frames
        # Retracing a curved path backwards: mirror the yaw rate while walking forward.
        a.keys[t : t + walk, self.key_names.index("w")] = 1
        a.mouse[t : t + walk, 0] = -curve_px
        t += walk
        a.mouse[t : t + turn_frames, 0] = self._px_for_deg(180.0 / turn_frames)
        return a


def _no_input_list(name: str) -> WorldsimError:
    return WorldsimError(
        f"policy {name!r} steers by the pose the world returns: it records (worldsim-record), "
        f"but has no input list to give ahead"
    )


class ClosedLoopPolicy(Policy):
    """A policy that reads the camera pose as it goes: :meth:`start` an episode, then
    :meth:`act` gives the input row of frame ``t`` from that frame's pose. For worlds where an
    input list does not fix the path (DOOM: momentum, walls). It has no input list before the
    world answers, so :meth:`actions` is refused; ``worldsim-record`` drives it."""

    closed_loop = True

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Refused with ``WorldsimError``: the inputs depend on the poses the world returns."""
        raise _no_input_list(self.name)

    @abstractmethod
    def start(self, num_frames: int, rng: np.random.Generator, episode: int = 0) -> None:
        """Begin an episode of ``num_frames`` frames (``rng`` for its randomness)."""

    @abstractmethod
    def act(self, t: int, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The input row that takes frame ``t`` (camera pose ``c2w (4, 4)``) to ``t + 1``:
        ``keys (K,)`` uint8, ``mouse (2,)`` float32 pixels."""


def _wrap(angle_rad: float) -> float:
    """``angle_rad`` in (-pi, pi]."""
    return math.atan2(math.sin(angle_rad), math.cos(angle_rad))


class RetracePolicy(ClosedLoopPolicy):
    """Walks out on a wandering path for ``OUT_SHARE`` of the episode, then walks the same path
    back, steering by the pose for the first of the breadcrumbs (dropped every ``REACH_M``
    metres, the newest first) that is at least ``LOOKAHEAD_M`` away (pure pursuit: momentum
    carries a player past a near one), forward only while it faces within ``FACE_DEG`` and every
    other frame in the last ``LOOKAHEAD_M``; within ``REACH_M`` of the start it turns to the start
    heading (pushed more than ``2 * LOOKAHEAD_M`` away again, it walks back). The last frames
    revisit the first view even where walls and momentum bend the path (DOOM), which an
    open-loop return (``go_and_return``) does not (``tools/revisit_check.py``)."""

    name = "retrace"
    OUT_SHARE = 0.35  # the rest walks back (as far as out) and turns twice
    REACH_M = 0.5  # breadcrumbs are this far apart; the start is reached this close
    LOOKAHEAD_M = 1.5  # it steers for the first breadcrumb at least this far (pure pursuit)
    TURN_DEG = 12.0  # the most it turns in one frame on the way back
    FACE_DEG = 40.0  # it walks only while the breadcrumb is within this of its heading
    WANDER_DEG = 2.0  # the outbound turn rate stays within +- this per frame

    def start(self, num_frames: int, rng: np.random.Generator, episode: int = 0) -> None:
        """Reset the path; the outbound part is ``OUT_SHARE`` of ``num_frames - 1`` rows.
        ``WorldsimError`` when the key list has no ``w`` (it walks with it)."""
        if "w" not in self.key_names:
            raise WorldsimError(f"policy {self.name!r} walks with the key 'w', which {self.key_names} lacks")
        self.rng = rng
        self.outbound = int((num_frames - 1) * self.OUT_SHARE)
        self.rate = float(rng.uniform(-self.WANDER_DEG, self.WANDER_DEG))
        self.trail: list[np.ndarray] = []  # (x, y) of every outbound frame
        self.crumbs: list[np.ndarray] | None = None  # the way back, next first
        self.start_yaw, self.start_pos = 0.0, np.zeros(2)
        self.arrived = False  # at the start: turning to its heading (until pushed well away)

    def _turn_toward(self, err_rad: float) -> float:
        deg = float(np.clip(math.degrees(err_rad), -self.TURN_DEG, self.TURN_DEG))
        return self._px_for_deg(deg)

    def act(self, t: int, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outbound: ``w`` held, the turn rate wandering; back: toward the next breadcrumb; then
        toward the start heading; see the class docstring."""
        keys, mouse = np.zeros(len(self.key_names), np.uint8), np.zeros(2, np.float32)
        forward = self.key_names.index("w")
        pos = np.asarray(c2w[:2, 3], np.float64)
        heading = np.asarray(c2w[:3, 2], np.float64)  # the camera's +z (OpenCV: forward) in the world
        yaw = math.atan2(heading[0], heading[1])  # clockwise from +y, as the controller turns
        if t == 0:
            self.start_yaw, self.start_pos = yaw, pos
        if t < self.outbound:
            self.trail.append(pos)
            self.rate = float(np.clip(self.rate + self.rng.normal(0.0, 0.4), -self.WANDER_DEG, self.WANDER_DEG))
            keys[forward] = 1
            mouse[0] = self._px_for_deg(self.rate)
            return keys, mouse
        if self.crumbs is None:  # drop the breadcrumbs of the way back, the start last
            self.crumbs = []
            for p in reversed(self.trail):
                if not self.crumbs or np.linalg.norm(p - self.crumbs[-1]) >= self.REACH_M:
                    self.crumbs.append(p)
            self.crumbs.append(self.start_pos)  # the last is the start, even with no way out
        # Pure pursuit: breadcrumbs nearer than the lookahead are passed (momentum carries the
        # player past a near one, which it would turn back for). The last is the start: within
        # REACH_M of it, it turns to the start heading; pushed out again (momentum), it goes back.
        while len(self.crumbs) > 1 and np.linalg.norm(self.crumbs[0] - pos) < self.LOOKAHEAD_M:
            self.crumbs.pop(0)
        d = self.crumbs[0] - pos
        dist = float(np.linalg.norm(d))
        self.arrived = dist < (2 * self.LOOKAHEAD_M if self.arrived else self.REACH_M) and len(self.crumbs) == 1
        if not self.arrived:
            err = _wrap(math.atan2(d[0], d[1]) - yaw)
            # Near the start, every other frame only: momentum would carry it past.
            pulse = dist > self.LOOKAHEAD_M or t % 2 == 0
            keys[forward] = abs(math.degrees(err)) < self.FACE_DEG and pulse
        else:
            err = _wrap(self.start_yaw - yaw)
        mouse[0] = self._turn_toward(err)
        return keys, mouse


class FullTurnPolicy(Policy):
    """Turns 360 degrees on the spot at a constant rate (direction alternates by episode)."""

    name = "full_turn"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Constant yaw of ``360 / (num_frames - 1)`` degrees per frame; sign alternates with ``episode``."""
        a = self._empty(num_frames)
        sign = 1.0 if episode % 2 == 0 else -1.0
        a.mouse[:-1, 0] = sign * self._px_for_deg(360.0 / (num_frames - 1))
        return a


class TurnsPolicy(Policy):
    """Steady turns: still pauses, then segments of constant yaw rate (1-6 degrees per frame,
    either way), some walking forward, some standing; the mouse turns a player makes, started
    from rest and in motion (explore's yaw rarely exceeds 2 degrees per frame)."""

    name = "turns"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Pauses of 2-9 frames, then turns of 8-23 frames at 1-6 degrees per frame, ``w`` held 40% of them."""
        a = self._empty(num_frames)
        t, end = 0, num_frames - 1
        while t < end:
            t += int(rng.integers(2, 10))  # held still
            turn = slice(t, min(t + int(rng.integers(8, 24)), end))
            a.mouse[turn, 0] = self._px_for_deg(rng.uniform(1.0, 6.0) * rng.choice([-1.0, 1.0]))
            if rng.random() < 0.4:
                self._hold(a, "w", turn)
            t = turn.stop
        return a


class IdlePolicy(Policy):
    """What a player who stops does: idle stretches of 24-60 frames (1.6-4 s at 15 fps) with no
    input at all, between short walks or turns of 4-12 frames. Odd episodes press the light key
    on row 0, so half the idling happens at night."""

    name = "idle"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Idle stretches (24-60 rows of zeros) between 4-12 rows of ``w`` and/or a 1-4 degree-per-frame turn."""
        a = self._empty(num_frames)
        end = num_frames - 1
        t = 0
        if episode % 2 == 1:
            self._hold(a, "l", np.array([0]))
            t = 1
        while t < end:
            t += int(rng.integers(24, 61))  # nothing pressed, mouse still
            move = slice(min(t, end), min(t + int(rng.integers(4, 13)), end))
            if rng.random() < 0.6:
                self._hold(a, "w", move)
            if rng.random() < 0.6:
                a.mouse[move, 0] = self._px_for_deg(rng.uniform(1.0, 4.0) * rng.choice([-1.0, 1.0]))
            t = move.stop
        return a


class HoldsPolicy(Policy):
    """Long holds of one key at a time, every key of ``key_names`` in turn (the light key
    included: held, it must toggle once): holds of 10-40 frames, separated by 0-6 idle frames,
    the mouse still or turning gently (under 1 degree per frame)."""

    name = "holds"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Key ``(episode + j) % K`` held for segment ``j`` (10-40 rows), 0-6 rows of rest between segments."""
        a = self._empty(num_frames)
        end, t, j = num_frames - 1, 0, 0
        while t < end:
            t += int(rng.integers(0, 7))
            hold = slice(min(t, end), min(t + int(rng.integers(10, 41)), end))
            a.keys[hold, (episode + j + attempt) % len(self.key_names)] = 1
            if rng.random() < 0.5:
                a.mouse[hold, 0] = self._px_for_deg(rng.uniform(-1.0, 1.0))
            t, j = hold.stop, j + 1
        return a


class LightPressesPolicy(Policy):
    """Presses of the light key lasting 1 to 10 frames, 6-20 frames apart, while standing, walking
    forward or turning slowly: a press toggles once however long it is held."""

    name = "light_presses"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """``l`` down for 1-10 rows, then up for 6-20; ``w`` held on 40% of episodes, a slow turn on 30%."""
        a = self._empty(num_frames)
        end = num_frames - 1
        if rng.random() < 0.4:
            self._hold(a, "w", slice(0, end))
        if rng.random() < 0.3:
            a.mouse[:end, 0] = self._px_for_deg(rng.uniform(-1.5, 1.5))
        t = int(rng.integers(0, 6))
        while t < end:
            press = slice(t, min(t + int(rng.integers(1, 11)), end))
            self._hold(a, "l", press)
            t = press.stop + int(rng.integers(6, 21))
        return a


class GlanceBackPolicy(Policy):
    """Looks away and back: a view held for 4-10 frames, a quick turn of 90-180 degrees (3-6
    frames), 8-20 frames facing away (walking for part of them in 30% of the glances), then the
    same turn back to the first heading. What the view shows on the way back was last seen
    longer ago than a context of a few chunks reaches: the revisit clips that teach a model to
    read a retrieved view (``teacher.revisit_prob``)."""

    name = "glance_back"

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Glances until ``num_frames``: hold, turn away, stay, turn back by the same angle."""
        a = self._empty(num_frames)
        end = num_frames - 1
        t = int(rng.integers(4, 11))
        while t < end:
            deg = rng.uniform(90.0, 180.0) * rng.choice([-1.0, 1.0])
            turn = int(rng.integers(3, 7))
            away = int(rng.integers(8, 21))
            a.mouse[t : min(t + turn, end), 0] = self._px_for_deg(deg / turn)
            t += turn
            if rng.random() < 0.3:
                self._hold(a, "w", slice(min(t, end), min(t + away // 2, end)))
            t += away
            a.mouse[min(t, end) : min(t + turn, end), 0] = self._px_for_deg(-deg / turn)
            t += turn + int(rng.integers(4, 11))
        return a


class ReplayPolicy(Policy):
    """The raw actions of an existing dataset's episodes (episode ``i`` of the source for
    episode ``i``), e.g. to re-render a human recording as ground truth."""

    name = "replay"

    def __init__(self, key_names: list[str], controller: CameraControllerConfig, source: str | Path | None = None):
        super().__init__(key_names, controller)
        if not source:
            raise WorldsimError("policy 'replay' needs replay_from=<dataset folder>")
        from worldsim.data.reader import RolloutDataset

        self.source = RolloutDataset(source)
        self.source.require_nonempty()
        if self.source.meta.key_names != self.key_names:
            raise WorldsimError(
                f"replay source keys {self.source.meta.key_names} differ from the env's {self.key_names}"
            )

    def source_seed(self, episode: int) -> int | None:
        """The env seed recorded for the source episode replayed as ``episode`` (None if unknown)."""
        return self.source.episodes[episode % len(self.source)].seed

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """Rows ``[:num_frames]`` of source episode ``episode % len(source)``; ``rng`` and ``attempt`` unused.

        Raises ``WorldsimError`` if that source episode has fewer than ``num_frames`` frames.
        """
        i = episode % len(self.source)
        arrays = self.source.load(i, ("keys", "mouse"))
        keys, mouse = arrays["keys"][:num_frames], arrays["mouse"][:num_frames]
        if len(keys) < num_frames:
            raise WorldsimError(
                f"replay source episode {self.source.path(i)} has {len(keys)} frames, fewer than {num_frames}"
            )
        return Actions(keys.astype(np.uint8), mouse.astype(np.float32))


class Resampled(Policy):
    """An open-loop policy drawn at :data:`POLICY_FPS` and played by a controller ``factor`` times
    faster (``controller.fps = factor * POLICY_FPS``): every drawn row is held for ``factor`` frames
    with its mouse pixels divided by ``factor``, so the camera moves the same metres and degrees per
    second and a key is held for the same time (a 1-row light press at 15 frames/s is a 2-frame
    press at 30). At 30 frames/s the episode passes through the 15 frames/s episode's poses at
    every second frame up to the small difference of turning in two half steps.
    """

    def __init__(self, inner: Policy, factor: int):
        super().__init__(inner.key_names, inner.ctrl)
        if factor < 2 or inner.closed_loop or isinstance(inner, ReplayPolicy):
            raise ValueError(
                f"Resampled needs an open-loop scripted policy and factor >= 2, got {inner.name}, {factor}"
            )
        self.inner, self.factor, self.name = inner, factor, inner.name

    def actions(self, num_frames: int, rng: np.random.Generator, episode: int = 0, attempt: int = 0) -> Actions:
        """``num_frames`` rows from the inner policy's ``ceil((num_frames - 1) / factor)`` moving
        rows, each held ``factor`` frames; the last row is zero (it takes the last frame nowhere).
        Exact (every drawn row whole, e.g. a full turn a full turn) when ``num_frames - 1`` is a
        multiple of ``factor``: 129 frames at 30 frames/s play the 65 of 15 frames/s."""
        drawn = self.inner.actions(-(-(num_frames - 1) // self.factor) + 1, rng, episode, attempt)
        keys = np.repeat(drawn.keys, self.factor, axis=0)[:num_frames].copy()
        mouse = (np.repeat(drawn.mouse, self.factor, axis=0)[:num_frames] / self.factor).astype(np.float32)
        keys[-1], mouse[-1] = 0, 0.0
        return Actions(keys, mouse)


def policy_factor(controller: CameraControllerConfig) -> int:
    """How many frames of ``controller`` one drawn row lasts: ``fps / POLICY_FPS`` when that is a
    whole number (1 at the scripted policies' own 15 frames/s), else 1 (rows as drawn: DOOM's
    35 / ``tics_per_step`` frames/s)."""
    ratio = controller.fps / POLICY_FPS
    return round(ratio) if ratio >= 1 and math.isclose(ratio, round(ratio)) else 1


POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (
        ExplorePolicy,
        ExploreLightsPolicy,
        LookAroundPolicy,
        GoAndReturnPolicy,
        FullTurnPolicy,
        TurnsPolicy,
        IdlePolicy,
        HoldsPolicy,
        LightPressesPolicy,
        GlanceBackPolicy,
        ReplayPolicy,
        RetracePolicy,
    )
}


def check_open_loop(name: str) -> None:
    """``WorldsimError`` in one line when policy ``name`` is unknown or closed-loop (it has no
    input list to give ahead: a model's rollout needs one), before anything slow loads."""
    if name not in POLICIES:
        raise unknown_name("policy", name, POLICIES)
    if POLICIES[name].closed_loop:
        raise _no_input_list(name)


def make_policy(
    name: str, key_names: list[str], controller: CameraControllerConfig, replay_from: str | None = None
) -> Policy:
    """Build the policy registered as ``name``; ``replay_from`` (a dataset folder) only for ``replay``.
    An open-loop scripted policy for a controller at a whole multiple of :data:`POLICY_FPS` comes
    :class:`Resampled` to it (same motion per second); replayed rows and closed-loop policies
    (which steer by the pose every frame) play as they are.

    Raises ``WorldsimError`` "unknown policy 'x'; valid: ..." for an unregistered name, and for
    ``replay`` without ``replay_from``.
    """
    if name not in POLICIES:
        raise unknown_name("policy", name, POLICIES)
    if name == ReplayPolicy.name:
        return ReplayPolicy(key_names, controller, replay_from)
    policy = POLICIES[name](key_names, controller)
    factor = policy_factor(controller)
    return policy if factor == 1 or policy.closed_loop else Resampled(policy, factor)
