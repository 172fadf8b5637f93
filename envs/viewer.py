"""A plain pygame window for ``render_mode="human"`` (the play window is ``play.py``'s job)."""

from __future__ import annotations

import os
import sys

import numpy as np

from worldsim.core.errors import WorldsimError


class FrameViewer:
    """Shows frames ``(H, W, 3)`` uint8 upscaled ``scale`` times; paces to ``fps``.

    Raises ``WorldsimError`` in one line when there is no display (Linux without ``DISPLAY`` or
    ``WAYLAND_DISPLAY``, unless ``SDL_VIDEODRIVER`` is set): use ``render_mode="rgb_array"``.
    """

    def __init__(self, title: str, frame_size: tuple[int, int], fps: float, scale: int = 6):
        headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if sys.platform.startswith("linux") and headless and not os.environ.get("SDL_VIDEODRIVER"):
            raise WorldsimError("render_mode='human' needs a display (DISPLAY is unset); use render_mode='rgb_array'")
        import pygame

        pygame.display.init()
        h, w = frame_size
        self.size = (w * scale, h * scale)
        self.screen = pygame.display.set_mode(self.size)
        pygame.display.set_caption(title)
        self.clock = pygame.time.Clock()
        self.fps = fps

    def show(self, frame: np.ndarray) -> None:
        """Draw ``frame``, process window events and wait for the next tick."""
        import pygame

        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
        self.screen.blit(pygame.transform.scale(surface, self.size), (0, 0))
        pygame.display.flip()
        pygame.event.pump()
        self.clock.tick(self.fps)

    def close(self) -> None:
        """Close the window."""
        import pygame

        pygame.display.quit()
