"""ROS 2 layer: the only place importing rclpy and message packages.

Importing this package does not import rclpy; the submodules do (``conversions``, ``mapper_node``, ...), so the core
and the CLI stay usable without ROS. ``sync`` is ROS-free (odometry buffering / interpolation).
"""
