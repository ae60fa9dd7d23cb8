"""ament_python package definition (works with colcon on a ROS 2 install and with plain pip in a virtualenv)."""
from glob import glob

from setuptools import find_packages, setup

package_name = "nerf_mapping"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["nerf_mapping", "nerf_mapping.*"]),
    package_data={"nerf_mapping.native": ["csrc/*.cpp", "csrc/*.h"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*")),
        ("share/" + package_name + "/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="nerf_mapping developers",
    maintainer_email="dev@nerf-mapping.invalid",
    description="Online neural mapping (Instant-NGP) with a thin ROS 2 layer",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "nerf-mapping = nerf_mapping.cli:main",
            "mapper_node = nerf_mapping.ros.mapper_node:main",
            "bag_player = nerf_mapping.ros.bag_player:main",
        ],
    },
)
