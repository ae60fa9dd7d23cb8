"""The online mapper (ROS-free): images and odometry in, keyframes, background training, refined poses and drift
out, maps saved and loaded (:mod:`.mapper`, :mod:`.map_io`); keyframe policy (:mod:`.keyframes`) and odometry
interpolation at image stamps (:mod:`.sync`). The ROS node (:mod:`nerf_mapping.ros.mapper_node`) only converts
messages and calls it."""
