"""nerf_mapping: online neural mapping (Instant-NGP) with a pure-PyTorch core and a thin ROS 2 layer.

The core (everything except ``nerf_mapping.ros``) imports no ROS package.
"""

__version__ = "0.1.0"
