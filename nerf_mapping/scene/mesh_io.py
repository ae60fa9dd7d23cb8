"""Ground-truth mesh I/O: binary PLY with per-vertex and per-face class ids.

Layout (binary_little_endian 1.0)::

    element vertex V: float x, y, z; uchar red, green, blue (material base colour); uchar class_id
    element face F:   list uchar int vertex_indices (always 3); uchar class_id

open3d / MeshLab read the geometry and colours and ignore the extra ``class_id`` properties; ``read_labeled_ply``
returns everything. Vertices are not shared between objects, so every triangle's vertices carry the triangle's class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_VERTEX_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                          ("class_id", "u1")])
_FACE_DTYPE = np.dtype([("n", "u1"), ("vertex_indices", "<i4", (3,)), ("class_id", "u1")])
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "ushort": "<u2", "uint16": "<u2", "short": "<i2", "int16": "<i2",
              "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4"}


def write_labeled_ply(path: Path, vertices: np.ndarray, triangles: np.ndarray, vertex_class: np.ndarray,
                      face_class: np.ndarray, vertex_colors: np.ndarray | None = None) -> None:
    v = np.zeros(len(vertices), _VERTEX_DTYPE)
    v["x"], v["y"], v["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if vertex_colors is not None:
        v["red"], v["green"], v["blue"] = vertex_colors[:, 0], vertex_colors[:, 1], vertex_colors[:, 2]
    v["class_id"] = vertex_class
    f = np.zeros(len(triangles), _FACE_DTYPE)
    f["n"] = 3
    f["vertex_indices"] = triangles
    f["class_id"] = face_class
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment nerf_mapping demo scene ground truth (class ids: labels.json)\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar class_id\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nproperty uchar class_id\nend_header\n"
    )
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(v.tobytes())
        fh.write(f.tobytes())


def read_labeled_ply(path: Path) -> dict[str, np.ndarray]:
    """Read a binary little-endian triangle PLY -> {"vertices" [V,3] f32, "triangles" [F,3] i64, and when present
    "vertex_class" [V] u8, "face_class" [F] u8, "vertex_colors" [V,3] u8}. Faces must all be triangles."""
    with open(path, "rb") as fh:
        data = fh.read()
    end = data.index(b"end_header") + len(b"end_header")
    end = data.index(b"\n", end) + 1
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary_little_endian PLY is supported")
    elements: list[tuple[str, int, list]] = []
    for line in lines:
        tok = line.split()
        if tok and tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok and tok[0] == "property":
            if tok[1] == "list":
                elements[-1][2].append((tok[4], "list", _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
            else:
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
    out: dict[str, np.ndarray] = {}
    pos = end
    for name, count, props in elements:
        fields = []
        for prop in props:
            if prop[1] == "list":  # triangle meshes: every list has length 3, so a fixed record layout works
                fields += [(prop[0] + "_n", prop[2]), (prop[0], prop[3], (3,))]
            else:
                fields.append(prop)
        dtype = np.dtype(fields)
        arr = np.frombuffer(data, dtype, count, pos)
        pos += dtype.itemsize * count
        if name == "vertex":
            out["vertices"] = np.stack([arr["x"], arr["y"], arr["z"]], 1).astype(np.float32)
            if "red" in arr.dtype.names:
                out["vertex_colors"] = np.stack([arr["red"], arr["green"], arr["blue"]], 1)
            if "class_id" in arr.dtype.names:
                out["vertex_class"] = arr["class_id"].copy()
        elif name == "face":
            if not np.all(arr["vertex_indices_n"] == 3):
                raise ValueError(f"{path}: non-triangle faces")
            out["triangles"] = arr["vertex_indices"].astype(np.int64)
            if "class_id" in arr.dtype.names:
                out["face_class"] = arr["class_id"].copy()
    return out
