"""The play window: pygame for the OpenGL context and input, moderngl to draw frames upscaled.

This is the only module that imports pygame. It knows nothing about where frames come from: it
polls input (keys held, mouse motion, commands) and draws the frames it is given, upscaled, with a
HUD overlay. Esc releases the mouse and a second Esc in a row quits; focus loss releases it too
(without arming the quit, so one Esc after coming back never ends the session); F12 saves a
screenshot (the game view, without the HUD); F9 starts/stops recording; P pauses; F5 resets;
F1 shows the help overlay with the key bindings; F3 hides the HUD.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from worldsim.core.errors import WorldsimError

_VS = """
#version 330
in vec2 in_pos; out vec2 v_uv;
void main() { v_uv = in_pos * 0.5 + 0.5; v_uv.y = 1.0 - v_uv.y; gl_Position = vec4(in_pos, 0.0, 1.0); }
"""
_FS = """
#version 330
uniform sampler2D u_frame; in vec2 v_uv; out vec4 f_color;
void main() { f_color = texture(u_frame, v_uv); }
"""


@dataclass
class WindowConfig:
    """The play window (``window.*`` in ``play.yaml``): size, display rate, key bindings."""

    scale: int = 8  # window pixels per frame pixel
    # Display ticks per second: null = the source's frame rate (the world's, or the model's time
    # step: 15 for the shipped models but student_builtin_v9, 30). Anything else would play the
    # world faster or slower than it moves, so it is refused (display_rate).
    target_fps: float | None = None
    filter: str = "nearest"  # nearest | smooth
    # Game key name (as in the world's key list) -> keyboard key name as pygame spells it.
    bindings: dict[str, str] = field(
        default_factory=lambda: {
            "w": "w",
            "a": "a",
            "s": "s",
            "d": "d",
            "space": "space",
            "left shift": "left shift",
            "l": "l",
        }
    )
    mouse_sensitivity: float = 1.0  # scales raw mouse pixels before the camera controller
    hud: bool = True  # overlay FPS, chunk time, latency, recording state (F3 toggles)


def display_rate(target_fps: float | None, source_fps: float) -> float:
    """The display's tick rate for a source of ``source_fps`` frames per second of world time:
    ``target_fps`` None -> ``source_fps``. The loop shows one new frame per tick, so any other
    rate would play the world at ``target_fps / source_fps`` times its speed: ``WorldsimError``
    in one line (a 30 Hz display needs a model whose frames are 1/30 s apart)."""
    if target_fps is None or math.isclose(target_fps, source_fps):
        return float(source_fps)
    raise WorldsimError(
        f"window.target_fps={target_fps:g} would play this source's {source_fps:g} frames/s of world time at "
        f"{target_fps / source_fps:.2g}x speed; leave it unset (null: the source's rate)"
    )


def require_display() -> None:
    """Fail with instructions instead of a traceback when there is no screen to open."""
    if os.environ.get("SDL_VIDEODRIVER") in ("offscreen", "dummy"):
        return
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise WorldsimError(
            "no display found (DISPLAY is not set). Run under a virtual screen: "
            "`xvfb-run -s '-screen 0 1024x768x24' python play.py`, or without a window: "
            "`python play.py headless=true steps=256 out=runs/play` (the model) or `worldsim-record` (the world)"
        )


def key_codes(bindings: dict[str, str]) -> dict[str, int]:
    """The keyboard code of every binding ``{game key: pygame key name}``; a name pygame does not
    know fails in one line. Needs no window, so play checks it before opening one."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.init()
    codes = {}
    for game_key, name in bindings.items():
        try:
            codes[game_key] = pygame.key.key_code(name)
        except ValueError as e:
            raise WorldsimError(f"binding {game_key!r}: {name!r} is not a key name pygame knows") from e
    return codes


def resolve_bindings(bindings: dict[str, str], key_names: list[str]) -> list[int]:
    """Keyboard codes in ``key_names`` order; unknown names fail with what is valid."""
    missing = [k for k in key_names if k not in bindings]
    extra = [k for k in bindings if k not in key_names]
    if missing or extra:
        raise WorldsimError(f"bindings must map exactly the keys {key_names}; missing {missing}, unknown {extra}")
    codes = key_codes(bindings)
    return [codes[k] for k in key_names]


class Window:
    """An OpenGL window that shows ``(H, W, 3)`` uint8 frames scaled up."""

    def __init__(self, cfg: WindowConfig, frame_size: tuple[int, int], title: str):
        require_display()
        if cfg.filter not in ("nearest", "smooth"):
            raise WorldsimError(f"window filter must be 'nearest' or 'smooth', got {cfg.filter!r}")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import moderngl
        import pygame

        self.pg = pygame
        self.fps = cfg.target_fps  # display ticks per second; play.py sets it from the source (display_rate)
        pygame.init()
        if not pygame.display.get_init():  # e.g. DISPLAY names a screen that is not there
            where = os.environ.get("DISPLAY", "")
            raise WorldsimError(
                f"cannot open a window on DISPLAY={where!r} ({pygame.get_error() or 'no video system'}); "
                "try running under xvfb-run"
            )
        self.cfg = cfg
        self.codes: list[int] = []
        h, w = frame_size
        self.size = (w * cfg.scale, h * cfg.scale)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MAJOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MINOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_PROFILE_MASK, pygame.GL_CONTEXT_PROFILE_CORE)
        try:
            pygame.display.set_mode(self.size, pygame.OPENGL | pygame.DOUBLEBUF)
        except pygame.error as e:
            raise WorldsimError(f"cannot open an OpenGL window ({e}); try running under xvfb-run") from e
        self.title = title
        self.ctx = moderngl.create_context()
        self.tex = self.ctx.texture((w, h), 3)
        f = moderngl.NEAREST if cfg.filter == "nearest" else moderngl.LINEAR
        self.tex.filter = (f, f)
        prog = self.ctx.program(vertex_shader=_VS, fragment_shader=_FS)
        quad = np.array([-1, -1, 1, -1, -1, 1, 1, 1], "f4")
        self.vao = self.ctx.vertex_array(prog, [(self.ctx.buffer(quad.tobytes()), "2f", "in_pos")])
        self.triangle_strip, self.depth_test = moderngl.TRIANGLE_STRIP, moderngl.DEPTH_TEST
        # HUD: text rendered by pygame into an RGBA texture, blended over the frame.
        self.hud_tex = self.ctx.texture(self.size, 4)
        self.hud_on, self.help_on, self.hud_text = cfg.hud, False, ""
        self.font = pygame.font.Font(None, 18)
        self.blend = moderngl.BLEND
        self.captured = False
        self.set_capture(True)
        self.clock = pygame.time.Clock()

    def bind_keys(self, key_names: list[str]) -> None:
        """Which keyboard keys feed which game keys (from ``cfg.bindings``)."""
        self.codes = resolve_bindings(self.cfg.bindings, key_names)

    def set_capture(self, on: bool) -> None:
        """Capture the mouse (hidden, grabbed, relative motion) or release it; either disarms
        the quit (only an Esc arms it)."""
        self.captured, self.quit_armed = on, False
        self.pg.event.set_grab(on)
        self.pg.mouse.set_visible(not on)
        self.pg.mouse.get_rel()  # drop motion accumulated while released

    def poll(self) -> tuple[np.ndarray, np.ndarray, set[str]]:
        """One tick of input: keys held ``(K,)`` uint8, mouse ``(dx, dy)`` and commands pressed."""
        pg = self.pg
        commands: set[str] = set()
        went_down: set[int] = set()  # a tap pressed and released between two polls still counts
        for ev in pg.event.get():
            if ev.type == pg.QUIT:
                commands.add("quit")
            elif ev.type == pg.KEYDOWN:
                went_down.add(ev.key)
                if ev.key != pg.K_ESCAPE:
                    self.quit_armed = False  # "a second Esc in a row"
                if ev.key == pg.K_ESCAPE:  # releases the mouse; the next Esc in a row quits
                    if self.quit_armed:
                        commands.add("quit")
                    else:
                        commands.add("release")
                        self.set_capture(False)
                        self.quit_armed = True
                elif ev.key == pg.K_F12:
                    commands.add("screenshot")
                elif ev.key == pg.K_F9:
                    commands.add("record")
                elif ev.key == pg.K_F1:
                    commands.add("help")
                    self.help_on = not self.help_on
                elif ev.key == pg.K_F3:
                    self.hud_on = not self.hud_on
                elif ev.key == pg.K_p:
                    commands.add("pause")
                elif ev.key == pg.K_F5:
                    commands.add("reset")
            elif ev.type == pg.MOUSEBUTTONDOWN and not self.captured:
                self.set_capture(True)
            elif ev.type == pg.WINDOWFOCUSLOST:
                self.set_capture(False)
        pressed = pg.key.get_pressed()
        keys = np.array([pressed[c] or c in went_down for c in self.codes], np.uint8)
        dx, dy = pg.mouse.get_rel()
        mouse = (
            np.array([dx, dy], np.float32) * self.cfg.mouse_sensitivity if self.captured else np.zeros(2, np.float32)
        )
        return keys, mouse, commands

    def _draw(self, hud: bool = False) -> None:
        # A world drawing in this context may have left depth testing on; the quad needs none.
        self.ctx.disable(self.depth_test)
        self.ctx.screen.use()
        self.tex.use(0)
        self.vao.render(self.triangle_strip)
        if hud:
            self.ctx.enable(self.blend)
            self.hud_tex.use(0)
            self.vao.render(self.triangle_strip)
            self.ctx.disable(self.blend)

    def _render_hud(self, lines: list[str]) -> None:
        pg = self.pg
        surf = pg.Surface(self.size, pg.SRCALPHA)
        y = 4
        for line in lines:
            text = self.font.render(line, True, (255, 255, 255))
            box = pg.Surface((text.get_width() + 6, text.get_height() + 2), pg.SRCALPHA)
            box.fill((0, 0, 0, 150))
            surf.blit(box, (4, y))
            surf.blit(text, (7, y + 1))
            y += text.get_height() + 3
        self.hud_tex.write(pg.image.tostring(surf, "RGBA"))

    def show(self, frame_u8: np.ndarray | None, hud_lines: list[str]) -> None:
        """Draw ``frame_u8`` (None: keep the last one) with the HUD lines (and help) on top."""
        lines = (hud_lines if self.hud_on else []) + (self.help_text().split("; ") if self.help_on else [])
        text = "\n".join(lines)
        with self.ctx:
            if frame_u8 is not None:
                self.tex.write(np.ascontiguousarray(frame_u8).tobytes())
            if text != self.hud_text:
                self._render_hud(lines)
                self.hud_text = text
            self._draw(hud=bool(lines))
            self.pg.display.flip()
        self.pg.display.set_caption(f"{self.title} | {hud_lines[0] if hud_lines else ''}")

    def screenshot(self) -> np.ndarray:
        """The game view ``(H*scale, W*scale, 3)`` uint8, top row first: the shown frame upscaled
        as the window draws it, without the HUD."""
        w, h = self.size
        with self.ctx:
            # After a flip the back buffer is undefined: draw the shown texture again, read that.
            self._draw()
            raw = self.ctx.screen.read(viewport=(0, 0, w, h), components=3)
        return np.frombuffer(raw, np.uint8).reshape(h, w, 3)[::-1].copy()

    def tick(self) -> None:
        """Sleep to the next display tick at :attr:`fps` (unpaced while it is unset)."""
        self.clock.tick(self.fps or 0)

    def help_text(self) -> str:
        """The bindings and controls, one line."""
        binds = ", ".join(f"{k}={v}" for k, v in self.cfg.bindings.items())
        return (
            f"keys: {binds}; mouse looks (click to capture, Esc releases); "
            "Esc quit, P pause, F5 reset, F9 record, F12 screenshot, F3 HUD, F1 help"
        )

    def close(self) -> None:
        """Close the window (pygame quits)."""
        self.pg.quit()
