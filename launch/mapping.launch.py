"""ROS 2 launch file for nerf_mapping (needs a ROS 2 install with launch / launch_ros).

    ros2 launch nerf_mapping mapping.launch.py bag:=/path/to/bag [params_file:=FILE] [rviz:=true]
        [use_sim_time:=true] [rate:=1.0] [loop:=false] [resume:=true]

Starts the nerf_mapper node with ``params_file`` (default share/nerf_mapping/config/mapper.yaml), the bag player when
``bag`` is set (publishing /clock when ``use_sim_time`` is true; it waits until the node subscribes to the image
topic), and rviz2 with share/nerf_mapping/rviz/nerf_mapping.rviz when ``rviz`` is true. Every process gets the
package's Fast DDS profile (16 MB shared-memory segment for lossless 640x480 images) through
FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3.x) or FASTRTPS_DEFAULT_PROFILES_FILE (Fast DDS 2.x: Humble / Iron / Jazzy),
unless ``fastdds_profile:=''``. ``resume:=true`` makes the node continue from its newest complete autosave (after a
crash). The launch shuts down when the node exits.

Without ``ros2 launch`` (e.g. a virtualenv with rclpy wheels) use ``nerf-mapping launch`` (nerf_mapping/ros/bringup.py),
which does the same with plain processes.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.events import Shutdown
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "nerf_mapping"
FASTDDS2_DISTROS = ("humble", "iron", "jazzy")


def _is_true(cfg):
    return PythonExpression(["'", cfg, "'.lower() in ('true', '1', 'yes', 'on')"])


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    bag = LaunchConfiguration("bag")
    params_file = LaunchConfiguration("params_file")
    rviz = LaunchConfiguration("rviz")
    use_sim_time = LaunchConfiguration("use_sim_time")
    rate = LaunchConfiguration("rate")
    loop = LaunchConfiguration("loop")
    profile = LaunchConfiguration("fastdds_profile")

    args = [
        DeclareLaunchArgument("bag", default_value="",
                              description="rosbag2 to play into the node (empty: no player, live sensors)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", "mapper.yaml"]),
                              description="parameters YAML of the node (nerf_mapper: ros__parameters:)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with the package's config"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock (the player publishes it when this is true)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="bag playback rate"),
        DeclareLaunchArgument("loop", default_value="false", description="replay the bag forever"),
        DeclareLaunchArgument("resume", default_value="false",
                              description="the node continues from its newest complete autosave"),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=PathJoinSubstitution([share, "config", "fastdds.xml"]),
                              description="Fast DDS XML profile for every process ('' = middleware defaults)"),
    ]

    # Fast DDS 3.x (Kilted and later) reads FASTDDS_DEFAULT_PROFILES_FILE (rmw_fastrtps warns when the old name is
    # set); Fast DDS 2.x (Humble, Iron, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE.
    has_profile = PythonExpression(["'", profile, "' != ''"])
    distro = EnvironmentVariable("ROS_DISTRO", default_value="")
    fastdds2 = PythonExpression(["'", distro, "' in ", str(FASTDDS2_DISTROS)])
    env = [
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile,
                               condition=IfCondition(PythonExpression([has_profile, " and not ", fastdds2]))),
        SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", profile,
                               condition=IfCondition(PythonExpression([has_profile, " and ", fastdds2]))),
    ]

    mapper = Node(
        package=PACKAGE,
        executable="mapper_node",
        name="nerf_mapper",
        output="screen",
        emulate_tty=True,
        parameters=[params_file, {"use_sim_time": ParameterValue(use_sim_time, value_type=bool),
                                  "resume": ParameterValue(LaunchConfiguration("resume"), value_type=bool)}],
        on_exit=[EmitEvent(event=Shutdown(reason="nerf_mapper exited"))],
    )

    has_bag = PythonExpression(["'", bag, "' != ''"])
    player_args = [bag, "--rate", rate, "--wait-for", "/camera/image_raw", "--wait-timeout", "120"]
    sim_and_bag = PythonExpression([has_bag, " and ", _is_true(use_sim_time)])
    wall_and_bag = PythonExpression([has_bag, " and not ", _is_true(use_sim_time)])
    players = []
    for cond, extra in ((sim_and_bag, ["--clock"]), (wall_and_bag, [])):
        for loop_cond, loop_arg in ((_is_true(loop), ["--loop"]), (PythonExpression(["not ", _is_true(loop)]), [])):
            players.append(Node(
                package=PACKAGE,
                executable="bag_player",
                name="bag_player",
                output="screen",
                arguments=player_args + extra + loop_arg,
                condition=IfCondition(PythonExpression([cond, " and ", loop_cond])),
            ))

    rviz_node = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        output="screen",
        arguments=["-d", PathJoinSubstitution([share, "rviz", "nerf_mapping.rviz"])],
        parameters=[{"use_sim_time": ParameterValue(use_sim_time, value_type=bool)}],
        condition=IfCondition(rviz),
    )

    info = LogInfo(msg=["nerf_mapping: params_file=", params_file, " bag=", bag, " use_sim_time=", use_sim_time,
                        " fastdds_profile=", profile])
    return LaunchDescription([*args, *env, info, mapper, *players, rviz_node])
