"""``nerf-mapping bag play``: rosbag2 playback with ``rosbags`` (reader) + rclpy (publishers), no rosbag2_py needed.

- Bags are opened by :func:`nerf_mapping.bags.open_reader` (ROS-free, shared with the benchmarks).
- Recorded timing: message ``i`` goes out at ``start + (t_i - t_0) / rate`` on the monotonic clock (absolute targets,
  so the schedule never drifts; lateness is measured and reported).
- Recorded QoS: the offered profiles stored in the bag (reliability / durability / history); ``/tf_static`` is always
  transient_local + reliable so late joiners get the static transforms. Volatile topics keep at least 10 messages.
- Zero-copy-ish: when the bag's own message definition equals the installed one (:func:`msg_bridge.definitions_match`)
  the recorded CDR bytes are published as they are (``Publisher.publish(bytes)``); otherwise the message is
  deserialised with the bag's definitions and converted field by field (:mod:`msg_bridge`). ``--convert`` forces the
  conversion path.
- ``--clock``: publishes ``/clock`` (rosgraph_msgs/Clock) at ``--clock-rate`` Hz (default 100) between messages, so
  nodes with ``use_sim_time:=true`` follow the bag's time; the clock starts at the first message's time and stays
  there while waiting (``--delay`` / ``--wait-for``).
- ``--loop`` replays from the start (the bag time, and /clock, jump back), ``--topics`` filters,
  SIGINT/SIGTERM stop cleanly after the current message.

Run as ``nerf-mapping bag play BAG ...`` or ``python -m nerf_mapping.ros.bag_player BAG ... [--ros-args ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nerf_mapping.bags import open_reader

TOPIC_TF_STATIC = "/tf_static"
_POLL_S = 0.02  # longest uninterrupted sleep: a stop request is seen within this


def describe_bag(bag: Path) -> dict:
    """Summary of a bag: duration, start/end (ns), per-topic type, count and offered QoS."""
    with open_reader(bag) as reader:
        topics = {}
        for conn in reader.connections:
            t = topics.setdefault(conn.topic, {"type": conn.msgtype, "count": 0, "qos": []})
            t["count"] += conn.msgcount
            for q in getattr(conn.ext, "offered_qos_profiles", None) or []:
                t["qos"].append({"reliability": q.reliability.name, "durability": q.durability.name,
                                 "history": q.history.name, "depth": int(q.depth)})
        return {"path": str(bag), "start_ns": int(reader.start_time), "end_ns": int(reader.end_time),
                "duration_s": (reader.end_time - reader.start_time) * 1e-9, "message_count": int(reader.message_count),
                "topics": dict(sorted(topics.items()))}


def qos_for(topic: str, connections) -> "object":
    """rclpy QoSProfile from the profiles recorded for ``topic`` (all of its connections)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    profiles = [q for c in connections for q in (getattr(c.ext, "offered_qos_profiles", None) or [])]
    count = sum(c.msgcount for c in connections)
    reliable = all(q.reliability.name != "BEST_EFFORT" for q in profiles)
    latched = topic == TOPIC_TF_STATIC or any(q.durability.name == "TRANSIENT_LOCAL" for q in profiles)
    depths = [int(q.depth) for q in profiles if q.history.name == "KEEP_LAST" and q.depth > 0]
    depth = max(depths or [10])
    if latched:  # every latched message must reach late joiners (e.g. several static broadcasters in one bag)
        depth = max(depth, min(count, 1000), 1)
        reliable = True
    else:
        depth = max(depth, 10)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


@dataclass
class PlayStats:
    counts: dict[str, int] = field(default_factory=dict)
    published: int = 0
    clock_msgs: int = 0
    loops: int = 0
    wall_s: float = 0.0
    bag_s: float = 0.0
    max_late_ms: float = 0.0
    mean_late_ms: float = 0.0
    raw_topics: list[str] = field(default_factory=list)
    converted_topics: list[str] = field(default_factory=list)
    interrupted: bool = False

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class BagPlayer:
    """Plays one bag on an rclpy node. ``run()`` blocks until the end (or ``stop()``); thread-safe ``stop()``."""

    def __init__(self, node, bag: Path, rate: float = 1.0, clock: bool = False, clock_rate: float = 100.0,
                 loop: bool = False, topics: list[str] | None = None, convert: bool = False, delay: float = 0.0,
                 wait_for: list[str] | None = None, wait_timeout: float = 10.0, progress: bool = True,
                 linger: float = 0.5) -> None:
        if not rate > 0:
            raise ValueError("--rate must be > 0")
        if clock and not clock_rate > 0:
            raise ValueError("--clock-rate must be > 0")
        self.node, self.bag, self.rate, self.loop = node, Path(bag), float(rate), loop
        self.clock, self.clock_period = clock, 1.0 / clock_rate if clock else math.inf
        self.topics = set(topics) if topics else None
        self.convert, self.delay, self.wait_for, self.wait_timeout = convert, delay, wait_for or [], wait_timeout
        self.progress, self.linger = progress, linger
        # a plain flag, not threading.Event: stop() runs in signal handlers, and Event.set() there can deadlock
        # on the Event's own lock when the signal lands while the main thread is inside Event.wait()
        self._stop_flag = False
        self.stats = PlayStats()
        self._clock_pub = None
        self._last_clock_ns = -1

    # ------------------------------------------------------------------------------------------------ control
    def stop(self) -> None:
        self._stop_flag = True

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop_flag and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, _POLL_S))

    @property
    def stopped(self) -> bool:
        return self._stop_flag

    # ------------------------------------------------------------------------------------------------ helpers
    def _log(self, text: str) -> None:
        if self.progress:
            print(f"[bag play] {text}", file=sys.stderr, flush=True)

    def _publish_clock(self, stamp_ns: int) -> None:
        if self._clock_pub is None:
            return
        stamp_ns = max(int(stamp_ns), self._last_clock_ns)  # never backwards within one pass
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(stamp_ns, 1_000_000_000)
        self._clock_pub.publish(msg)
        self._last_clock_ns = stamp_ns
        self.stats.clock_msgs += 1

    def _sleep_until(self, target: float, clock_base: tuple[float, int] | None) -> bool:
        """Sleep until monotonic ``target``; publish /clock ticks meanwhile. ``clock_base`` = (wall, bag_ns) maps
        monotonic time to bag time (None: clock frozen at the bag start). False if stopped."""
        while not self._stop_flag:
            now = time.monotonic()
            if self._clock_pub is not None and now >= self._next_clock:
                if now - self._next_clock > self.clock_period:  # fell behind (big message): do not burst, resync
                    self._next_clock = now
                if clock_base is None:
                    self._publish_clock(self._bag_start)
                else:
                    self._publish_clock(clock_base[1] + (self._next_clock - clock_base[0]) * self.rate * 1e9)
                self._next_clock += self.clock_period
                continue
            if now >= target:
                return True
            time.sleep(max(0.0, min(min(target, self._next_clock) - now, _POLL_S)))
        return False

    def _wait_for_subscribers(self, pubs: dict) -> None:
        wanted = list(pubs) if "all" in self.wait_for else [t for t in self.wait_for if t in pubs]
        missing = [t for t in self.wait_for if t != "all" and t not in pubs]
        if missing:
            self._log(f"--wait-for: topic(s) not played: {', '.join(missing)}")
        if not wanted:
            return
        deadline = time.monotonic() + self.wait_timeout
        while not self._stop_flag:
            waiting = [t for t in wanted if pubs[t][0].get_subscription_count() == 0]
            if not waiting:
                self._log("subscribers matched")
                return
            if time.monotonic() >= deadline:
                self._log(f"no subscriber after {self.wait_timeout:.1f} s on {', '.join(waiting)}; playing anyway")
                return
            self._sleep_until(min(deadline, time.monotonic() + 0.05), None)

    # ------------------------------------------------------------------------------------------------ playback
    def run(self) -> PlayStats:
        from . import msg_bridge

        st = self.stats
        late_sum, late_n = 0.0, 0
        wall0 = time.monotonic()
        with open_reader(self.bag) as reader:
            by_topic: dict[str, list] = {}
            for conn in reader.connections:
                if self.topics is None or conn.topic in self.topics:
                    by_topic.setdefault(conn.topic, []).append(conn)
            if self.topics:
                for t in sorted(self.topics - set(by_topic)):
                    self._log(f"topic {t} is not in the bag")
            if not by_topic:
                raise ValueError(f"nothing to play in {self.bag}")
            pubs: dict[str, tuple] = {}  # topic -> (publisher, {conn.id: raw?})
            for topic, conns in by_topic.items():
                msgtype = conns[0].msgtype
                cls = msg_bridge.msg_class(msgtype)
                raw = {c.id: (not self.convert and c.msgtype == msgtype
                              and getattr(c.ext, "serialization_format", "cdr") == "cdr"
                              and msg_bridge.definitions_match(reader.typestore, c.msgtype)) for c in conns}
                pubs[topic] = (self.node.create_publisher(cls, topic, qos_for(topic, conns)), raw)
                (st.raw_topics if all(raw.values()) else st.converted_topics).append(topic)
                st.counts[topic] = 0
            if self.clock:
                from rclpy.qos import QoSProfile

                from rosgraph_msgs.msg import Clock

                self._clock_pub = self.node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
            conns = [c for cs in by_topic.values() for c in cs]
            self._bag_start = int(reader.start_time)  # timing is relative to the bag start (also when filtering)
            bag_end = int(reader.end_time)
            duration = max(bag_end - self._bag_start, 0) * 1e-9
            self._log(f"{self.bag}: {sum(c.msgcount for c in conns)} messages on {len(by_topic)} topics, "
                      f"{duration:.1f} s at rate {self.rate:g}"
                      + (f", /clock at {1 / self.clock_period:g} Hz" if self.clock else ""))
            self._next_clock = time.monotonic() if self.clock else math.inf
            self._publish_clock(self._bag_start)
            if self.delay > 0:
                self._sleep_until(time.monotonic() + self.delay, None)
            self._wait_for_subscribers(pubs)
            wall0 = time.monotonic()  # statistics cover playback, not discovery

            while not self._stop_flag:
                start = time.monotonic()
                t0 = self._bag_start
                clock_base = (start, t0)
                next_report = start + 1.0
                for conn, stamp, raw in reader.messages(connections=conns):
                    target = start + (stamp - t0) * 1e-9 / self.rate
                    if not self._sleep_until(target, clock_base if self.clock else None):
                        break
                    late = time.monotonic() - target
                    late_sum += late
                    late_n += 1
                    st.max_late_ms = max(st.max_late_ms, late * 1e3)
                    pub, raw_ok = pubs[conn.topic]
                    if raw_ok[conn.id]:
                        pub.publish(raw if isinstance(raw, bytes) else bytes(raw))
                    else:
                        pub.publish(msg_bridge.to_rclpy(reader.deserialize(raw, conn.msgtype), conn.msgtype))
                    st.counts[conn.topic] += 1
                    st.published += 1
                    st.bag_s = (stamp - t0) * 1e-9
                    if self.progress and time.monotonic() >= next_report:
                        next_report += 1.0
                        pct = 100.0 * st.bag_s / duration if duration > 0 else 100.0
                        self._log(f"{st.bag_s:7.1f} / {duration:.1f} s ({pct:3.0f}%), {st.published} msgs, "
                                  f"late max {st.max_late_ms:.1f} ms")
                if self._stop_flag or not self.loop:
                    break
                st.loops += 1
                self._last_clock_ns = -1  # the bag time (and /clock) jumps back to the start
                self._log(f"loop {st.loops}")
            st.interrupted = self._stop_flag
            st.mean_late_ms = 1e3 * late_sum / max(late_n, 1)
            st.wall_s = time.monotonic() - wall0
            if self.linger > 0 and not st.interrupted:  # let reliable writers deliver / retransmit the tail
                self._pause(self.linger)
        return st


# ---------------------------------------------------------------------------------------------------------------- CLI
def add_play_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", type=Path, help="rosbag2 directory (mcap or sqlite3) or its metadata.yaml")
    p.add_argument("--rate", "-r", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--clock", action="store_true", help="publish /clock (rosgraph_msgs/Clock) for use_sim_time")
    p.add_argument("--clock-rate", type=float, default=100.0, help="/clock frequency in Hz (default 100)")
    p.add_argument("--loop", "-l", action="store_true", help="replay forever")
    p.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="only play these topics")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to wait before playing (discovery)")
    p.add_argument("--wait-for", action="append", default=[], metavar="TOPIC",
                   help="wait until TOPIC has a subscriber before playing (repeatable; 'all' = every topic)")
    p.add_argument("--wait-timeout", type=float, default=10.0, help="give up waiting for subscribers after S s")
    p.add_argument("--convert", action="store_true",
                   help="always deserialise + convert messages (default: publish recorded CDR bytes when the "
                        "bag's definitions match the installed messages)")
    p.add_argument("--stats-json", type=Path, default=None, help="write playback statistics here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def run_play(args, ros_args: list[str] | None = None) -> int:
    """Handler of ``bag play`` (rclpy imported here, not at CLI start-up)."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    if not Path(args.bag).exists():
        print(f"error: bag {args.bag} not found", file=sys.stderr)
        return 2
    rclpy.init(args=["bag_player"] + (["--ros-args", *ros_args] if ros_args else []),
               signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("bag_player")
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, clock=args.clock, clock_rate=args.clock_rate,
                           loop=args.loop, topics=args.topics, convert=args.convert, delay=args.delay,
                           wait_for=args.wait_for, wait_timeout=args.wait_timeout, progress=not args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
        return 2

    def on_signal(signum, _frame):
        player.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = player.run()
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        node.destroy_node()
        rclpy.try_shutdown()
    rate = stats.published / stats.wall_s if stats.wall_s > 0 else 0.0
    if not args.quiet:
        print(f"[bag play] {'stopped' if stats.interrupted else 'done'}: {stats.published} messages in "
              f"{stats.wall_s:.2f} s ({rate:.0f} msg/s), late mean {stats.mean_late_ms:.2f} ms / max "
              f"{stats.max_late_ms:.1f} ms" + (f", {stats.clock_msgs} /clock" if args.clock else ""),
              file=sys.stderr, flush=True)
        for topic, n in sorted(stats.counts.items()):
            print(f"[bag play]   {topic}: {n}", file=sys.stderr)
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats.as_dict(), indent=2))
    return 0


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(own arguments, arguments after --ros-args)."""
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, ros = split_ros_args(argv)
    ap = argparse.ArgumentParser(prog="bag_player", description="play a rosbag2 with rclpy (recorded timing, /clock)")
    add_play_arguments(ap)
    return run_play(ap.parse_args(own), ros)


if __name__ == "__main__":
    sys.exit(main())
