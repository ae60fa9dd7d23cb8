"""The browser viewer of the live map (:mod:`nerf_mapping.viewer.viewer`, on viser): ``viewer.port`` starts it in
the node, ``nerf-mapping view`` opens a saved map offline, ``python -m nerf_mapping.viewer.bench`` measures it."""
from nerf_mapping.viewer.config import ViewerConfig

__all__ = ["Viewer", "ViewerConfig"]


def __getattr__(name):  # the viewer imports numpy and (when started) viser: only on use
    if name == "Viewer":
        from nerf_mapping.viewer.viewer import Viewer

        return Viewer
    raise AttributeError(name)
