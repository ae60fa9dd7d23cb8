"""launch_testing integration test of launch/mapping.launch.py + a tiny demo-scene bag.

Runs on a ROS 2 install where `launch_testing` is importable and nerf_mapping is built with colcon (the launch file
starts the `mapper_node` / `bag_player` executables of the package); skipped otherwise (e.g. the pip/venv setup,
where test_bag_tools.py exercises the same processes through `nerf-mapping launch`).

    colcon build --packages-select nerf_mapping_interfaces nerf_mapping && source install/setup.bash
    launch_test test/test_launch_testing.py      # or: python -m pytest test/test_launch_testing.py
"""

from __future__ import annotations

import os
import tempfile
import time
import unittest
from pathlib import Path

import pytest

launch_testing = pytest.importorskip("launch_testing", reason="launch_testing is not installed (needs a ROS 2 install)")
if not hasattr(launch_testing, "post_shutdown_test"):  # an unrelated namespace package of that name
    pytest.skip("launch_testing is not installed (needs a ROS 2 install)", allow_module_level=True)
pytest.importorskip("launch_ros", reason="launch_ros is not installed (needs a ROS 2 install)")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="nerf_mapping_launch_test_log_"))


def _launch_file() -> Path:
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("nerf_mapping")) / "launch" / "mapping.launch.py"
        if p.is_file():
            return p
    except Exception:  # noqa: BLE001 - not installed with colcon: use the checkout's file
        pass
    return REPO / "launch" / "mapping.launch.py"


@pytest.mark.launch_test
def generate_test_description():
    pytest.importorskip("open3d", reason="the demo scene generator needs open3d")
    from nerf_mapping.scene import SceneConfig, generate_scene

    tmp = Path(tempfile.mkdtemp(prefix="nerf_mapping_launch_test_"))
    bag = generate_scene(SceneConfig(frames=12, width=80, height=60), tmp / "scene", progress=False).bag
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(_launch_file())),
        launch_arguments={"bag": str(bag), "use_sim_time": "true", "rate": "2.0", "rviz": "false"}.items(),
    )
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()]), {"bag": bag}


class TestMappingLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("nerf_mapping_launch_test")

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def _wait_for(self, msg_type, topic: str, count: int, timeout: float) -> list:
        got = []
        sub = self.node.create_subscription(msg_type, topic, got.append, 10)
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end and len(got) < count:
                rclpy.spin_once(self.node, timeout_sec=0.1)
        finally:
            self.node.destroy_subscription(sub)
        return got

    def test_node_reports_status_and_receives_frames(self):
        from nerf_mapping_interfaces.msg import MapStatus

        status = self._wait_for(MapStatus, "/nerf_mapper/status", 3, timeout=90.0)
        self.assertGreaterEqual(len(status), 3, "no /nerf_mapper/status from the launched node")

    def test_player_publishes_clock(self):
        from rosgraph_msgs.msg import Clock

        clock = self._wait_for(Clock, "/clock", 5, timeout=90.0)
        self.assertGreaterEqual(len(clock), 5)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        # SIGINT from launch at the end: every process must exit cleanly
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
