"""The browser viewer's settings (:class:`ViewerConfig`): every default and its description live here, as for the
mapper (:mod:`nerf_mapping.mapping.config`). The node declares them as ``viewer.*`` parameters
(:class:`nerf_mapping.ros.params.NodeConfig`); ``nerf-mapping view`` takes ``--port`` / ``--host``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ViewerConfig:
    port: int = 0
    """TCP port of the browser viewer (http://host:port); 0 = no viewer. The node starts it when this is > 0 (the
    README demo sets 8080); a busy port is replaced by the next free one (the log says which)."""
    host: str = "127.0.0.1"
    """Interface the viewer listens on: 127.0.0.1 = this machine only; 0.0.0.0 = every interface (anyone who can
    reach the port can query the map, save it and export meshes into the output directory)."""
    moving_width: int = 160
    """Render width (pixels, at the camera's aspect) while the browser's camera moves; made smaller when the recent
    renders' cost per ray predicts more than ``moving_budget_s``."""
    moving_budget_s: float = 0.35
    """Longest predicted render while the camera moves (s; waiting for the running training step included): with
    ``moving_duty`` 0.7 a render of 0.35 s is followed by a 0.15 s gap for training, a refresh at 2 Hz."""
    still_width: int = 320
    """Render width (pixels) once the camera has been still for ``still_delay_s`` (the node's ``render_budget_s``
    bounds it: a costly view is rendered smaller and upsampled)."""
    still_delay_s: float = 0.3
    """Seconds without a camera move after which the view is rendered again at ``still_width``."""
    refresh_period_s: float = 5.0
    """While the camera is still: the view is rendered again at most this often, and only when the map has trained
    since (0 = never)."""
    moving_duty: float = 0.7
    """Largest share of the time spent rendering for the viewer while a camera moves (each render pauses training:
    after a render of d seconds the next waits d x (1 / moving_duty - 1)); a user moving the view wants it more
    than training does, but training never stops."""
    idle_duty: float = 0.05
    """Largest share of the time spent on periodic refreshes while every camera is still (training keeps the
    rest)."""
    scene_period_s: float = 1.0
    """Period of the status, keyframe frustums, paths and current camera updates while a browser is connected
    (s; without one: every 10 s)."""
    max_path_points: int = 2000
    """Points of each drawn path (longer paths are subsampled evenly)."""
    max_mesh_triangles: int = 100_000
    """Triangles of the shown mesh (a larger exported mesh is decimated for the browser; the file keeps them all)."""
    max_query_chars: int = 200
    """Longest query text accepted (characters, after control characters are stripped); longer ones are refused."""
    jpeg_quality: int = 85
    """JPEG quality of the rendered background images."""
    match_fov: bool = True
    """Set each browser's vertical field of view so that its window sees what the mapped camera saw (the render then
    fills the window); false: the browser keeps its own and the render is cropped or framed to it."""
