"""``nerf-mapping launch``: bring-up without ``ros2 launch``.

Starts, as real processes with this interpreter (``python -m``):

- the mapping node ``nerf_mapping.ros.mapper_node`` with ``--ros-args --params-file FILE`` (default
  ``config/mapper.yaml`` of the package) and ``-p use_sim_time:=true`` with ``--use-sim-time``;
- with ``--bag``: the bag player ``nerf_mapping.ros.bag_player`` (``--clock`` with ``--use-sim-time``), which waits
  until the node subscribes to the image topic before playing;
- with ``--rviz``: ``rviz2 -d rviz/nerf_mapping.rviz`` when ``rviz2`` is on PATH (warning otherwise).

Every child gets ``FASTDDS_DEFAULT_PROFILES_FILE`` = the package's ``config/fastdds.xml`` (16 MB shared-memory
segment: lossless 640x480 rgb8 at camera rates) unless the caller already set one. Children run in their own process
group; SIGINT / SIGTERM are forwarded to them, they get ``--stop-timeout`` seconds to exit, then SIGTERM, then
SIGKILL. The exit code is non-zero when a child crashed. Output of each child is prefixed on the terminal and
written to ``<log dir>/<name>.log``; ROS logs go to ``$ROS_LOG_DIR`` (default ``~/.ros/log``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "nerf_mapping"
NODE_MODULE = "nerf_mapping.ros.mapper_node"
PLAYER_MODULE = "nerf_mapping.ros.bag_player"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"  # Fast DDS 3.x (ROS 2 Kilted); FASTRTPS_... on Fast DDS 2.x


def share_dir() -> Path:
    """The package's share directory (holding config/, launch/, rviz/).

    Order: ``$NERF_MAPPING_SHARE_DIR``; the ament index (``colcon build`` install: share/nerf_mapping); the source
    checkout next to this package (development / editable installs); ``<sys.prefix>/share/nerf_mapping`` (pip
    install of the data_files). Falls back to the checkout path even when it does not exist."""
    env = os.environ.get("NERF_MAPPING_SHARE_DIR")
    if env:
        return Path(env)
    candidates: list[Path] = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory(PACKAGE)))
        except (PackageNotFoundError, KeyError, ValueError, LookupError, OSError):  # OSError: no AMENT_PREFIX_PATH
            pass
    except ImportError:
        pass
    checkout = Path(__file__).resolve().parents[2]
    candidates += [checkout, Path(sys.prefix) / "share" / PACKAGE]
    for c in candidates:
        if (c / "config").is_dir() or (c / "launch").is_dir():
            return c
    return checkout


def fastdds_profile() -> Path:
    return share_dir() / "config" / "fastdds.xml"


def default_params_file() -> Path | None:
    """``config/mapper.yaml`` of the package, or None when it is not there (the node then uses its defaults)."""
    p = share_dir() / "config" / "mapper.yaml"
    return p if p.is_file() else None


def rviz_config() -> Path:
    return share_dir() / "rviz" / "nerf_mapping.rviz"


def child_env(profile: Path | None) -> dict[str, str]:
    """Environment for the children: the Fast DDS profile, and this package importable with ``python -m``."""
    env = dict(os.environ)
    if profile is not None and not env.get(PROFILE_ENV) and not env.get("FASTRTPS_DEFAULT_PROFILES_FILE"):
        env[PROFILE_ENV] = str(profile)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if pkg_parent not in parts:
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *parts])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Child:
    name: str
    cmd: list[str]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    signalled: bool = False
    pump: threading.Thread | None = None
    optional: bool = False  # its normal exit does not stop the bring-up (the player at the end of the bag)
    lines: list[str] = field(default_factory=list)


def _pump(child: Child, log_file, quiet: bool) -> None:
    assert child.proc is not None and child.proc.stdout is not None
    for raw in iter(child.proc.stdout.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        log_file.write(line + "\n")
        log_file.flush()
        if not quiet:
            print(f"[{child.name}] {line}", flush=True)
    log_file.close()


def build_commands(args, params: Path | None, profile: Path | None) -> list[Child]:
    py = sys.executable
    ros: list[str] = []
    if params is not None:
        ros += ["--params-file", str(params)]
    if args.use_sim_time:
        ros += ["-p", "use_sim_time:=true"]
    if getattr(args, "resume", False):
        ros += ["-p", "resume:=true"]
    node_cmd = [py, "-m", args.node_module] + (["--ros-args", *ros] if ros else [])
    children = [Child("mapper", node_cmd)]
    if args.bag is not None:
        cmd = [py, "-m", PLAYER_MODULE, str(args.bag), "--rate", str(args.rate), "--wait-for", args.wait_topic,
               "--wait-timeout", str(args.wait_timeout)]
        if args.use_sim_time:
            cmd.append("--clock")
        if args.loop:
            cmd.append("--loop")
        children.append(Child("player", cmd, optional=True))
    if args.rviz:
        rviz = shutil.which("rviz2")
        if rviz is None:
            print("[launch] warning: --rviz given but rviz2 is not on PATH (source a ROS 2 install); skipping it",
                  file=sys.stderr)
        else:
            cmd = [rviz, "-d", str(rviz_config())]
            if args.use_sim_time:
                cmd += ["--ros-args", "-p", "use_sim_time:=true"]
            children.append(Child("rviz2", cmd, optional=True))
    return children


def default_log_dir() -> Path:
    base = Path(os.environ.get("ROS_LOG_DIR") or Path(os.environ.get("ROS_HOME") or Path.home() / ".ros") / "log")
    return base / f"nerf_mapping_launch_{time.strftime('%Y-%m-%d-%H-%M-%S')}_{os.getpid()}"


class Bringup:
    def __init__(self, children: list[Child], env: dict[str, str], log_dir: Path, stop_timeout: float,
                 exit_after_bag: bool, quiet: bool) -> None:
        self.children, self.env, self.log_dir = children, env, log_dir
        self.stop_timeout, self.exit_after_bag, self.quiet = stop_timeout, exit_after_bag, quiet
        self._stop_flag = False  # set from signal handlers: a plain flag (Event.set() there can deadlock)
        self.stop_reason = ""

    def request_stop(self, reason: str) -> None:
        if not self._stop_flag:
            self.stop_reason = reason
            self._stop_flag = True

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for c in self.children:
            c.log_path = self.log_dir / f"{c.name}.log"
            log_file = open(c.log_path, "w")
            log_file.write("$ " + " ".join(c.cmd) + "\n")
            c.proc = subprocess.Popen(c.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
            c.pump = threading.Thread(target=_pump, args=(c, log_file, self.quiet), daemon=True)
            c.pump.start()
            print(f"[launch] started {c.name} (pid {c.proc.pid}): {' '.join(c.cmd)}", flush=True)

    def _signal(self, c: Child, sig: int) -> None:
        if c.proc is not None and c.proc.poll() is None:
            try:
                os.killpg(c.proc.pid, sig)  # the child's own group: also reaches its helpers
            except ProcessLookupError:
                pass

    def supervise(self) -> int:
        """Wait until a stop request, a crash, or the end of the work; then stop all. Returns the exit code."""
        crashed: list[str] = []
        while not self._stop_flag:
            for c in self.children:
                rc = c.proc.poll() if c.proc else None
                if rc is None or c.signalled:
                    continue
                c.signalled = True  # seen exiting
                if rc != 0:
                    crashed.append(f"{c.name} exited with code {rc}")
                    self.request_stop(f"{c.name} exited with code {rc}")
                elif c.name == "player":
                    print("[launch] bag playback finished", flush=True)
                    if self.exit_after_bag:
                        self.request_stop("bag finished (--exit-after-bag)")
                elif not c.optional:
                    self.request_stop(f"{c.name} exited")
            time.sleep(0.1)
        print(f"[launch] stopping ({self.stop_reason})", flush=True)
        return self.shutdown(crashed)

    def shutdown(self, crashed: list[str] | None = None) -> int:
        crashed = list(crashed or [])
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in reversed(running):  # player and rviz first, then the node
            self._signal(c, signal.SIGINT)
        for sig, timeout in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 3.0)):
            deadline = time.monotonic() + timeout
            for c in running:
                try:
                    c.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            late = [c for c in running if c.proc.poll() is None]
            if not late:
                break
            for c in late:
                print(f"[launch] {c.name} did not stop in time: sending {signal.Signals(sig).name}", flush=True)
                crashed.append(f"{c.name} had to be killed ({signal.Signals(sig).name})")
                self._signal(c, sig)
        for c in running:
            c.proc.wait()
            rc = c.proc.returncode
            # an interrupted child may report the interrupt itself (-SIGINT / 130): a clean stop
            if rc not in (0, -signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM) \
                    and not any(x.startswith(c.name) for x in crashed):
                crashed.append(f"{c.name} exited with code {rc} while stopping")
        for c in self.children:
            if c.pump is not None:
                c.pump.join(timeout=2.0)
        for c in self.children:
            rc = c.proc.returncode if c.proc else None
            print(f"[launch] {c.name}: exit code {rc}, log {c.log_path}", flush=True)
        if crashed:
            print("[launch] error: " + "; ".join(crashed), file=sys.stderr, flush=True)
            return 1
        return 0


def add_bringup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bag", type=Path, default=None, help="rosbag2 to play into the node")
    p.add_argument("--params", type=Path, default=None,
                   help="ROS parameters YAML for the node (default: the package's config/mapper.yaml)")
    p.add_argument("--rate", type=float, default=1.0, help="bag playback rate")
    p.add_argument("--loop", action="store_true", help="replay the bag forever")
    p.add_argument("--use-sim-time", action="store_true",
                   help="node (and rviz2) follow /clock, which the player publishes")
    p.add_argument("--rviz", action="store_true", help="also start rviz2 (if on PATH) with rviz/nerf_mapping.rviz")
    p.add_argument("--resume", action="store_true",
                   help="the node continues from its newest complete autosave (output_dir/autosave)")
    p.add_argument("--exit-after-bag", action="store_true", help="stop everything when the bag has been played")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="where <child>.log files go (default: $ROS_LOG_DIR or ~/.ros/log/nerf_mapping_launch_*)")
    p.add_argument("--fastdds-profile", type=Path, default=None,
                   help="Fast DDS XML profile (default: the package's config/fastdds.xml)")
    p.add_argument("--no-fastdds-profile", action="store_true", help="do not set a Fast DDS profile")
    p.add_argument("--stop-timeout", type=float, default=15.0,
                   help="seconds the children get to exit after Ctrl-C before SIGTERM / SIGKILL")
    p.add_argument("--wait-topic", default="/camera/image_raw",
                   help="the player starts once this topic has a subscriber (the node is up)")
    p.add_argument("--wait-timeout", type=float, default=120.0, help="... or after this many seconds")
    p.add_argument("--quiet", action="store_true", help="do not echo the children's output (logs only)")
    p.add_argument("--node-module", default=NODE_MODULE, help=argparse.SUPPRESS)  # tests substitute a stub node


def run_bringup(args) -> int:
    if args.bag is not None and not Path(args.bag).exists():
        print(f"error: bag {args.bag} not found", file=sys.stderr)
        return 2
    params = args.params
    if params is not None:
        if not Path(params).is_file():
            print(f"error: parameters file {params} not found", file=sys.stderr)
            return 2
        params = Path(params).resolve()
    else:
        params = default_params_file()
        if params is None:
            print(f"[launch] warning: no config/mapper.yaml in {share_dir()}; the node uses its built-in defaults",
                  file=sys.stderr)
    profile = None
    if not args.no_fastdds_profile:
        profile = Path(args.fastdds_profile) if args.fastdds_profile else fastdds_profile()
        if not profile.is_file():
            print(f"[launch] warning: Fast DDS profile {profile} not found; using the middleware defaults",
                  file=sys.stderr)
            profile = None
    env = child_env(profile)
    log_dir = Path(args.log_dir) if args.log_dir else default_log_dir()
    children = build_commands(args, params, profile)
    bringup = Bringup(children, env, log_dir, args.stop_timeout, args.exit_after_bag, args.quiet)

    print(f"[launch] parameters: {params or '(node defaults)'}", flush=True)
    print(f"[launch] Fast DDS profile: {env.get(PROFILE_ENV) or env.get('FASTRTPS_DEFAULT_PROFILES_FILE') or '(none)'}",
          flush=True)
    print(f"[launch] logs: {log_dir} (ROS logs: {env.get('ROS_LOG_DIR') or '~/.ros/log'})", flush=True)

    def on_signal(signum, _frame):
        bringup.request_stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        bringup.start()
        return bringup.supervise()
    except BaseException:
        bringup.request_stop("error")
        bringup.shutdown()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nerf-mapping launch", description=__doc__.splitlines()[0])
    add_bringup_arguments(ap)
    return run_bringup(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
