"""Geometry, in one place: torch SO(3)/SE(3) for training (:mod:`.lie`), numpy 4x4 rigid transforms for
bookkeeping (:mod:`.rigid`), and axis conventions / scene normalisation (:mod:`.frames`)."""

from nerf_mapping.geometry.frames import (focus_point, is_rigid, model_c2w_to_optical_pose, normalize_poses,
                                          opencv_to_opengl, opengl_to_opencv, optical_pose_to_model_c2w,
                                          rigidity_error, strict_focus_point, to_file_frame, transform_poses)
from nerf_mapping.geometry.lie import (compose, invert_rigid, quat_to_rotmat, rotmat_to_quat, se3_exp, se3_log, skew,
                                       so3_exp, so3_log)
from nerf_mapping.geometry.rigid import (as4, interpolate_poses, interpolate_se3, inv_pose, make_pose,
                                         matrix_from_quat_xyzw, quat_xyzw_from_matrix, slerp)

__all__ = ["as4", "compose", "focus_point", "interpolate_poses", "interpolate_se3", "inv_pose", "invert_rigid",
           "is_rigid", "make_pose", "matrix_from_quat_xyzw", "model_c2w_to_optical_pose", "normalize_poses",
           "opencv_to_opengl", "opengl_to_opencv", "optical_pose_to_model_c2w", "quat_to_rotmat",
           "quat_xyzw_from_matrix", "rigidity_error", "rotmat_to_quat", "se3_exp", "se3_log", "skew", "slerp",
           "so3_exp", "so3_log", "strict_focus_point", "to_file_frame", "transform_poses"]
