"""Offscreen OpenGL renderer of a :class:`WorldGeometry` (moderngl, EGL: no X server needed).

Draws sky (gradient + sun/moon), then the lit, fogged scene into a supersampled framebuffer
with two colour attachments: RGBA8 colour and R32F view depth (metres along camera +z). The
readback is box-filtered down to the frame size (anti-aliasing, calibration lesson 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.world_gen import VERTEX_FLOATS, WorldGeometry
from worldsim.core.camera import gl_projection, gl_view_matrix
from worldsim.core.errors import WorldsimError

_SCENE_VS = """
#version 330
uniform mat4 u_view;
uniform mat4 u_proj;
in vec3 in_pos; in vec3 in_normal; in vec3 in_color; in float in_emissive;
out vec3 v_normal; out vec3 v_color; out float v_emissive; out vec3 v_eye;
void main() {
    vec4 eye = u_view * vec4(in_pos, 1.0);
    v_eye = eye.xyz; v_normal = in_normal; v_color = in_color; v_emissive = in_emissive;
    gl_Position = u_proj * eye;
}
"""

_SCENE_FS = """
#version 330
uniform vec3 u_sun; uniform vec3 u_fog_color; uniform float u_night; uniform float u_fog_density;
in vec3 v_normal; in vec3 v_color; in float v_emissive; in vec3 v_eye;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
void main() {
    vec3 n = normalize(v_normal);
    float day = 1.0 - u_night;
    float diffuse = max(dot(n, u_sun), 0.0);
    vec3 lit = v_color * (0.06 + day * (0.32 + 0.75 * diffuse));
    lit += v_color * v_emissive * u_night * (0.55 + 0.35 * max(n.z, 0.0));  // lights on at night
    float fog = 1.0 - exp(-pow(length(v_eye) * u_fog_density, 1.5));
    f_color = vec4(mix(lit, u_fog_color, fog), 1.0);
    f_depth = -v_eye.z;
}
"""

_SKY_VS = """
#version 330
in vec2 in_ndc;
out vec2 v_ndc;
void main() { v_ndc = in_ndc; gl_Position = vec4(in_ndc, 0.0, 1.0); }
"""

_SKY_FS = """
#version 330
uniform mat4 u_inv_proj_rot;
uniform vec3 u_sun; uniform vec3 u_zenith; uniform vec3 u_horizon; uniform vec3 u_sun_color;
uniform float u_far; uniform float u_sun_cos;
in vec2 v_ndc;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
void main() {
    vec4 p = u_inv_proj_rot * vec4(v_ndc, 1.0, 1.0);
    vec3 dir = normalize(p.xyz / p.w);
    float up = clamp(dir.z, 0.0, 1.0);
    vec3 sky = mix(u_horizon, u_zenith, pow(up, 0.6));
    float s = dot(dir, u_sun);
    sky = mix(sky, u_sun_color, smoothstep(u_sun_cos - 0.002, u_sun_cos + 0.002, s));
    sky += 0.25 * u_sun_color * pow(max(s, 0.0), 64.0);
    f_color = vec4(sky, 1.0);
    f_depth = u_far;
}
"""

NIGHT_ZENITH = np.array([0.02, 0.03, 0.09], np.float32)
NIGHT_HORIZON = np.array([0.07, 0.08, 0.16], np.float32)


@dataclass(frozen=True)
class RenderSettings:
    """Output frame size in pixels, pinhole intrinsics, clip planes in metres, fog density in 1/metres
    (fog fraction ``1 - exp(-(distance * density) ** 1.5)``) and the supersampling factor.
    """

    height: int
    width: int
    intrinsics: np.ndarray  # (3, 3), pixels of the output frame
    near_m: float
    far_m: float
    fog_density: float
    supersample: int


def create_gl_context():  # -> moderngl.Context
    """A headless GL 3.3 context through EGL, or a WorldsimError that says what to install."""
    import moderngl

    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as e:  # moderngl raises plain Exception for a missing EGL/driver
        raise WorldsimError(
            f"cannot create an offscreen OpenGL context through EGL ({e}); on Debian/Ubuntu install "
            "libegl1 libegl-mesa0 libgl1-mesa-dri"
        ) from e


class WorldRenderer:
    """Renders one world's geometry from any c2w pose; holds its own GL context."""

    def __init__(self, geom: WorldGeometry, settings: RenderSettings, ctx: Any = None):
        """``ctx``: an existing moderngl context to draw in (a play window's), else a new EGL one."""
        self.geom = geom
        self.s = settings
        self.owns_ctx = ctx is None
        ctx = self.ctx = ctx if ctx is not None else create_gl_context()
        ss = settings.supersample
        size = (settings.width * ss, settings.height * ss)
        self.fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer(size, components=4), ctx.renderbuffer(size, components=1, dtype="f4")],
            depth_attachment=ctx.depth_renderbuffer(size),
        )
        self.scene = ctx.program(vertex_shader=_SCENE_VS, fragment_shader=_SCENE_FS)
        self.sky = ctx.program(vertex_shader=_SKY_VS, fragment_shader=_SKY_FS)
        assert geom.vertices.shape[1] == VERTEX_FLOATS
        vbo = ctx.buffer(geom.vertices.astype("f4").tobytes())
        ibo = ctx.buffer(geom.indices.astype("u4").tobytes())
        self.scene_vao = ctx.vertex_array(
            self.scene, [(vbo, "3f 3f 3f 1f", "in_pos", "in_normal", "in_color", "in_emissive")], ibo
        )
        tri = np.array([[-1, -1], [3, -1], [-1, 3]], "f4")
        self.sky_vao = ctx.vertex_array(self.sky, [(ctx.buffer(tri.tobytes()), "2f", "in_ndc")])
        # Projection for the supersampled target: same field of view, scaled intrinsics.
        k_ss = settings.intrinsics.copy()
        k_ss[:2] *= ss
        self.proj = gl_projection(k_ss, size[1], size[0], settings.near_m, settings.far_m)
        self.sky["u_far"].value = settings.far_m
        self.scene["u_proj"].write(self.proj.T.astype("f4").tobytes())  # GLSL is column-major
        self.scene["u_fog_density"].value = settings.fog_density
        self.scene["u_sun"].value = tuple(geom.sun_dir)
        self.sky["u_sun"].value = tuple(geom.sun_dir)

    def render(self, c2w: np.ndarray, night: bool) -> tuple[np.ndarray, np.ndarray]:
        """-> frame ``(H, W, 3)`` uint8 and depth ``(H, W)`` float32 metres (sky = far)."""
        with self.ctx:  # several worlds (or a play window) may each have a current context
            return self._render(c2w, night)

    def _render(self, c2w: np.ndarray, night: bool) -> tuple[np.ndarray, np.ndarray]:
        g, s = self.geom, self.s
        view = gl_view_matrix(c2w)
        zenith = NIGHT_ZENITH if night else g.sky_zenith
        horizon = NIGHT_HORIZON if night else g.sky_horizon
        rot_only = view.copy()
        rot_only[:3, 3] = 0.0
        self.sky["u_inv_proj_rot"].write(np.linalg.inv(self.proj @ rot_only).T.astype("f4").tobytes())
        self.sky["u_zenith"].value = tuple(zenith)
        self.sky["u_horizon"].value = tuple(horizon)
        self.sky["u_sun_color"].value = (0.75, 0.78, 0.85) if night else (1.0, 0.95, 0.75)
        self.sky["u_sun_cos"].value = float(np.cos(np.radians(2.0 if night else 3.5)))
        self.scene["u_view"].write(view.T.astype("f4").tobytes())
        self.scene["u_night"].value = 1.0 if night else 0.0
        self.scene["u_fog_color"].value = tuple(horizon)

        ctx = self.ctx
        self.fbo.use()
        self.fbo.clear(depth=1.0)
        ctx.disable(ctx.DEPTH_TEST)  # the sky is behind everything; scene depth comes from the clear
        self.sky_vao.render()
        ctx.enable(ctx.DEPTH_TEST)
        self.scene_vao.render()

        ss = s.supersample
        hs, ws = s.height * ss, s.width * ss
        rgb = np.frombuffer(self.fbo.read(components=3, attachment=0), np.uint8).reshape(hs, ws, 3)
        dep = np.frombuffer(self.fbo.read(components=1, attachment=1, dtype="f4"), np.float32).reshape(hs, ws)
        rgb, dep = rgb[::-1], dep[::-1]  # GL rows run bottom-up
        if ss > 1:
            blocks = rgb.reshape(s.height, ss, s.width, ss, 3).astype(np.uint16).sum((1, 3))
            rgb = ((blocks + ss * ss // 2) // (ss * ss)).astype(np.uint8)
            dep = dep.reshape(s.height, ss, s.width, ss).min((1, 3))
        return np.ascontiguousarray(rgb), np.ascontiguousarray(dep)

    def release(self) -> None:
        """Release the GL context if this renderer created it (a shared context is left to its owner)."""
        if self.owns_ctx:
            self.ctx.release()
