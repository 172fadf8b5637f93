"""The stability evaluation (worldsim/eval/stability.py) credits a model that does what the world
does and catches the two failures a player saw in teacher v1: the view fading while standing
still, and a held light key toggling again at the next chunk."""

import numpy as np
import pytest
from test_evaluate import _StandIn  # noqa: E402  (tests/ is on sys.path)

import worldsim.eval.stability as st
from envs.builtin import BuiltinWorldConfig
from worldsim.data.metrics import PSNR_MAX_DB
from worldsim.inference.engine import Chunk

L = _StandIn.key_names.index("l")


class _LightStandIn(_StandIn):
    """2-frame chunks. ``oracle``: the true frames; ``fading``: the last context frame, darker by
    1% per frame; ``brighter``/``darker``: the truth 12 values brighter or darker; ``light``: its
    own day/night state drawn flat (130 / 20), toggled on a press of ``l`` that continues across
    chunks (``per_chunk``: forgetting at every chunk that the key was already down, the v1
    failure)."""

    context_frames, chunk_frames = 4, 2

    def __init__(self, mode):
        super().__init__(oracle=mode == "oracle")
        self.mode = mode

    def reset(self, frames, c2w, keys, mouse, seed=None):
        super().reset(frames, c2w, keys, mouse, seed)
        self.night, self.prev, self.made = False, 0, 0

    def step(self, keys, mouse):
        k = self.chunk_frames
        if self.mode in ("oracle",):
            return super().step(keys, mouse)
        out = []
        for i in range(k):
            if self.mode == "fading":
                self.made += 1
                out.append((self.last.astype(np.float64) * 0.99**self.made).astype(np.uint8))
                continue
            if self.mode in ("brighter", "darker"):  # the true view 12 values brighter or darker: same contrast
                shift = 12 if self.mode == "brighter" else -12
                out.append(np.clip(self.truth[self.t + i].astype(int) + shift, 0, 255).astype(np.uint8))
                continue
            before = self.prev if (i or self.mode == "light") else 0
            if keys[i, L] and not before:
                self.night = not self.night
            self.prev = keys[i, L]
            out.append(np.full_like(self.last, 20 if self.night else 130))
        self.t += k
        return Chunk(np.stack(out), np.tile(np.eye(4, dtype=np.float32), (k, 1, 1)))


@pytest.fixture
def truth_into(monkeypatch):
    """Route the world's frames for each rollout into the stand-in, as the engine under test."""

    def attach(stand_in):
        real = st.world_rollout

        def recorded(engine, seed, keys, mouse, world=None):
            arrays = real(engine, seed, keys, mouse, world)
            stand_in.truth = arrays["frames"]
            stand_in.worlds.append(world)
            return arrays

        stand_in.worlds = []

        monkeypatch.setattr(st, "world_rollout", recorded)
        return stand_in

    return attach


def test_presses_are_exact_only_when_a_held_key_is_one_press(truth_into):
    right = st.presses(truth_into(_LightStandIn("light")), [99000])
    assert all(p["exact"] == p["runs"] == 2 and p["truth_turns"] == 4 for p in right.values())
    wrong = st.presses(truth_into(_LightStandIn("per_chunk")), [99000])
    assert wrong["1"]["exact"] == 2  # a 1-frame press never spans a chunk boundary
    for length in ("2", "4", "8"):  # longer presses do, at some phase: extra toggles
        assert wrong[length]["exact"] < 2 and wrong[length]["generated_turns"] > wrong[length]["truth_turns"]


def test_idle_credits_a_still_view_and_catches_one_that_fades(truth_into, monkeypatch):
    good = st.idle(truth_into(_LightStandIn("oracle")), 99000, 40)
    assert good["within_truth_range"] == 1.0 and good["psnr_db_tail"] == PSNR_MAX_DB
    fading = st.idle(truth_into(_LightStandIn("fading")), 99000, 240)
    assert fading["within_truth_range"] < 0.9 and fading["psnr_db_tail"] < 30
    assert fading["gen_mean_tail"] < good["gen_mean_tail"] - 8
    # the headline is the last tenth of the frames (at least IDLE_TAIL), where the fade has gone furthest
    assert fading["tail_frames"] == st.IDLE_TAIL == 200
    assert fading["psnr_db_tail"] == pytest.approx(np.mean(fading["psnr_db_by_frame"][-st.IDLE_TAIL :]))
    monkeypatch.setattr(st, "IDLE_TAIL", 20)  # a long rollout's tail at the size of a short one's
    long = st.idle(truth_into(_LightStandIn("fading")), 99000, 400)
    assert long["tail_frames"] == 40
    by_frame = long["psnr_db_by_frame"]
    assert long["psnr_db_tail"] == pytest.approx(np.mean(by_frame[-40:]))
    assert long["psnr_db_tail"] != pytest.approx(np.mean(by_frame[-20:]))  # the tail is not constant
    assert fading["psnr_db_tail"] < fading["psnr_db_first_100"] - 3
    # a brightness shift beyond the tolerance leaves the range even where the contrast is right
    for shifted in ("brighter", "darker"):
        assert st.idle(truth_into(_LightStandIn(shifted)), 99000, 10)["within_truth_range"] == 0.0


def test_stability_writes_its_plots_and_summary(truth_into, tmp_path):
    stand_in = truth_into(_LightStandIn("light"))
    cfg = st.StabilityConfig(starts=1, idle_frames=6, hold_frames=4, press_frames=True, idle_night=True)
    world = BuiltinWorldConfig()  # the ground truth's world config reaches every rollout (DOOM: its wad)
    m = st.stability(stand_in, cfg, tmp_path, world)
    assert stand_in.worlds and all(w is world for w in stand_in.worlds)
    assert len(m["idle"]["runs"]) == 2 and m["idle"]["runs"][1]["night"]
    assert set(m["holds"]) == set(stand_in.key_names)
    assert m["holds"]["l"]["light_turns_truth"] == 1 == m["holds"]["l"]["light_turns_generated"]
    assert (tmp_path / "idle_psnr.png").stat().st_size > 1000 and (tmp_path / "idle_brightness.png").is_file()
    text = "\n".join(st.stability_lines(m))
    assert "idle: 2 starts x 6 frames" in text and "hold l" in text and "light pressed 8 frame(s)" in text
