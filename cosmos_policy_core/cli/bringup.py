"""`cosmos-aloha bringup`: start the ROS 2 graph one process per node where `ros2 launch` is absent.

Same node list, parameter files, restart rule and stop sequence as launch/bringup.launch.py (both read
`cosmos_aloha.graph`).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from cosmos_policy_core.errors import ConfigError

log = logging.getLogger(__name__)


def graph_module():
    """`cosmos_aloha.graph` (ROS-free; installed with the ROS package sources)."""
    try:
        from cosmos_aloha import graph
    except ImportError as exc:  # pragma: no cover - only without the package sources
        raise ConfigError(
            f"cannot import cosmos_aloha.graph ({exc}); install the repository (`pip install -e .`)"
        ) from exc
    return graph


def graph_environment(base: dict | None = None) -> dict:
    """Environment for the graph's processes: the caller's, plus GRAPH_ENV where it is not set."""
    env = dict(os.environ if base is None else base)
    for key, value in graph_module().environment().items():
        env.setdefault(key, value)
    env["PYTHONUNBUFFERED"] = "1"  # node logs reach the prefixer line by line
    return env


@dataclass
class NodeProcess:
    """One node of the plan and its current process (a restarted node gets a new one)."""

    name: str
    argv: list[str]
    respawn: bool
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    started_s: float = 0.0
    attempt: int = 0                       # restarts in a row (graph.RESPAWN)
    restart_at_s: float | None = None      # a restart is due then
    exits: list[int] = field(default_factory=list)   # exit codes of processes that ended while the graph ran

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode


@dataclass
class BringupResult:
    returncodes: dict[str, int] = field(default_factory=dict)   # each node's last process
    stopped_by: str = ""          # "timeout", "signal", or "exit of <node>"
    skipped: tuple = ()
    restarts: dict[str, list[int]] = field(default_factory=dict)   # node -> exit codes it was restarted after

    @property
    def ok(self) -> bool:
        # 0 is a clean exit; -SIGINT / -SIGTERM only if a node ignored our shutdown request.
        return all(code == 0 for code in self.returncodes.values())


def _pump(name: str, stream, out) -> None:
    width = 17
    for line in iter(stream.readline, ""):
        out.write(f"[{name:<{width}}] {line}" if line.endswith("\n") else f"[{name:<{width}}] {line}\n")
        out.flush()
    stream.close()


def node_command(node) -> list[str]:
    return [sys.executable, "-m", node.spec.module, *graph_module().ros_arguments(node)]


class Bringup:
    """Runs a graph plan as child processes: restarts a crashed `respawn` node with graph.RESPAWN's back-off,
    stops the graph when another node exits, and stops every node cleanly (SIGINT, then SIGTERM after
    graph.STOP_GRACE_S, then SIGKILL)."""

    def __init__(self, plan, env: dict | None = None, out=None, stop_timeout_s: float | None = None):
        graph = graph_module()
        self.plan = plan
        self.env = graph_environment(env)
        self.env.update(getattr(plan, "environment", {}))   # a role's discovery and transports (roles.environment)
        self.out = out or sys.stdout
        self.stop_timeout_s = graph.STOP_GRACE_S if stop_timeout_s is None else stop_timeout_s
        self.kill_timeout_s = graph.STOP_KILL_S
        self.respawn = graph.RESPAWN
        self.nodes: list[NodeProcess] = []
        self._stop = threading.Event()
        self.stopped_by = ""

    def start(self) -> None:
        for node in self.plan.nodes:
            entry = NodeProcess(node.name, node_command(node), node.spec.respawn)
            self.nodes.append(entry)
            self._spawn(entry)
        if self.plan.rviz:
            self._start_rviz()

    def _spawn(self, node: NodeProcess) -> None:
        # Own session: a terminal Ctrl-C reaches only us, and we stop the nodes in order.
        node.process = subprocess.Popen(node.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, bufsize=1, start_new_session=True)
        node.reader = threading.Thread(target=_pump, args=(node.name, node.process.stdout, self.out), daemon=True)
        node.reader.start()
        node.started_s, node.restart_at_s = time.monotonic(), None
        log.info("started %s (pid %d): %s", node.name, node.process.pid, " ".join(node.argv[1:]))

    def _start_rviz(self) -> None:
        import shutil

        rviz = shutil.which("rviz2")
        if rviz is None:
            log.warning("rviz requested but rviz2 is not on PATH (it comes with a ROS 2 desktop install); skipping")
            return
        argv = [rviz, "-d", str(self.plan.rviz_config)]
        if self.plan.namespace:
            argv += ["--ros-args", "-r", f"__ns:={self.plan.namespace}"]
        entry = NodeProcess("rviz2", argv, respawn=False)
        self.nodes.append(entry)
        self._spawn(entry)

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stopped_by = reason
            self._stop.set()

    def _say(self, line: str) -> None:
        self.out.write(f"[{'bringup':<17}] {line}\n")
        self.out.flush()

    def supervise(self, now_s: float) -> None:
        """Restart due nodes, schedule restarts of crashed `respawn` nodes, stop on any other exit."""
        for node in self.nodes:
            if node.restart_at_s is not None:
                if now_s >= node.restart_at_s:
                    self._say(f"restarting {node.name} (restart {node.attempt + 1} in a row)")
                    self._spawn(node)
                continue
            if node.process is None or node.process.poll() is None:
                continue
            code = node.process.returncode
            node.exits.append(code)
            if not node.respawn:
                self.request_stop(f"exit of {node.name} (code {code})")
                return
            node.attempt = self.respawn.next_attempt(node.attempt, now_s - node.started_s)
            delay = self.respawn.delay(node.attempt)
            node.restart_at_s = now_s + delay
            self._say(f"{node.name} exited (code {code}); restarting it in {delay:g} s")

    def wait(self, seconds: float | None) -> None:
        """Until `seconds` pass, a stop is requested, or a node without `respawn` exits."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stop.is_set():
            now = time.monotonic()
            self.supervise(now)
            if deadline is not None and now >= deadline:
                self.request_stop("timeout")
            self._stop.wait(0.1)

    def stop(self) -> dict[str, int]:
        """SIGINT to every node (reverse start order), escalate for those that do not exit in time."""
        for sig, grace in ((signal.SIGINT, self.stop_timeout_s), (signal.SIGTERM, self.kill_timeout_s),
                           (signal.SIGKILL, 3.0)):
            alive = [n for n in reversed(self.nodes) if n.process is not None and n.process.poll() is None]
            if not alive:
                break
            if sig is not signal.SIGINT:
                log.warning("%s did not stop within %g s; sending %s", ", ".join(n.name for n in alive),
                            self.stop_timeout_s if sig is signal.SIGTERM else self.kill_timeout_s, sig.name)
            for node in alive:
                try:
                    node.process.send_signal(sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + grace
            for node in alive:
                try:
                    node.process.wait(timeout=max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for node in self.nodes:
            if node.reader is not None:
                node.reader.join(timeout=2.0)
        return {n.name: n.returncode for n in self.nodes if n.process is not None}


def run_bringup(plan, seconds: float | None, env: dict | None = None, out=None,
                handle_signals: bool = True) -> BringupResult:
    """Start the plan, run for `seconds` (None: until Ctrl-C / SIGTERM), stop everything, report exit codes."""
    bringup = Bringup(plan, env=env, out=out)
    previous = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda s, f: bringup.request_stop("signal"))
    try:
        bringup.start()
        bringup.wait(seconds)
    finally:
        codes = bringup.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    restarts = {n.name: n.exits for n in bringup.nodes if n.exits and n.respawn}
    return BringupResult(codes, bringup.stopped_by, plan.skipped, restarts)


def arguments_from_cli(args) -> dict[str, str]:
    values = {
        "sim": "true" if args.sim else "false",
        "task": args.task,
        "seed": str(args.seed),
        "checkpoint": args.checkpoint,
        "engine": args.engine,
        "planner": str(args.planner).lower(),
        "rviz": str(args.rviz).lower(),
        "replay": args.replay,
        "trajectory": args.trajectory,
        "teleop": str(args.teleop).lower(),
        "record": str(args.record).lower(),
        "image_height": str(args.image_height),
        "image_width": str(args.image_width),
        "temporal_ensemble": args.temporal_ensemble,
        "namespace": args.namespace,
        "role": args.role,
        "peers": args.peers,
        "image_transport": args.image_transport,
        "jpeg_quality": "" if args.jpeg_quality is None else str(args.jpeg_quality),
    }
    for item in args.arg or []:
        key, sep, value = item.partition(":=") if ":=" in item else item.partition("=")
        if not sep:
            raise ConfigError(f"--arg {item!r}: expected NAME:=VALUE")
        values[key] = value
    return values


def _run(args) -> int:
    graph = graph_module()
    plan = graph.plan(arguments_from_cli(args))   # GraphArgumentError names a bad argument; nothing started
    for name, why in plan.skipped:
        print(f"bringup: not starting {name}: {why}")
    if args.list:
        for node in plan.nodes:
            print(f"{node.name:14s} {' '.join(node_command(node))}")
        env = {**graph.environment(), **plan.environment}
        print("environment (give observers on this host the same): "
              + " ".join(f"{key}={value}" for key, value in sorted(env.items())))
        return 0
    if not plan.nodes:
        raise ConfigError("nothing to start for these arguments (see `cosmos-aloha bringup --list`)")
    print(f"bringup: {', '.join(plan.names)}" + (f" for {args.seconds:g} s" if args.seconds else " (Ctrl-C stops)"))
    result = run_bringup(plan, args.seconds)
    print(f"bringup: stopped ({result.stopped_by}); exit codes {result.returncodes}"
          + (f"; restarted after exits {result.restarts}" if result.restarts else ""))
    return 0 if result.ok and not result.stopped_by.startswith("exit") else 1


def add_graph_arguments(parser) -> None:
    """The launch arguments as CLI flags (shared with `cosmos-aloha demo`)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sim", dest="sim", action="store_true", default=True, help="MuJoCo sim (default)")
    mode.add_argument("--real", dest="sim", action="store_false", help="real ALOHA: cameras + aloha_driver")
    parser.add_argument("--task", default="transfer_cube", help="sim task: transfer_cube | insertion")
    parser.add_argument("--seed", type=int, default=0, help="sim scene seed")
    parser.add_argument("--checkpoint", default="", help="policy checkpoint (empty: no policy node)")
    parser.add_argument("--engine", default="torch", help="torch | compile | onnx | tensorrt")
    parser.add_argument("--planner", action="store_true", help="also run the best-of-N planner")
    parser.add_argument("--rviz", action="store_true", help="start rviz2 (when installed)")
    parser.add_argument("--replay", default="auto", help="scripted chunk source: auto | true | false")
    parser.add_argument("--trajectory", default="sine", help="replay: sine | episode .hdf5 | actions .npy")
    parser.add_argument("--teleop", action="store_true", help="leader-arm teleop instead of the executor")
    parser.add_argument("--record", action="store_true", help="record the graph's topics")
    parser.add_argument("--image-height", type=int, default=480)
    parser.add_argument("--image-width", type=int, default=640)
    parser.add_argument("--temporal-ensemble", default="auto", choices=("auto", "true", "false"),
                        help="auto: as the checkpoint's deploy section says; true: the executor averages the live "
                             "chunks and the policy queries every few steps; false: whole chunks")
    parser.add_argument("--namespace", default="", help="ROS namespace of every node and topic (e.g. left_cell)")
    parser.add_argument("--role", default="all", choices=("all", "robot", "gpu"),
                        help="all: the whole graph here; robot: sim or driver and cameras, executor, recorder; gpu: "
                             "policy and planner (the other host; docs/guide.md, 'The policy on another host')")
    parser.add_argument("--peers", default="",
                        help="with --role robot/gpu: the other host's address (ROS_STATIC_PEERS; ';' between several)")
    parser.add_argument("--image-transport", default="auto", choices=("auto", "raw", "compressed"),
                        help="images the policy and planner take: auto = compressed (JPEG) with --role gpu, else raw")
    parser.add_argument("--jpeg-quality", type=int, default=None,
                        help="JPEG quality (1-100) of the compressed topics (default: the parameter files', 90)")
    parser.add_argument("--arg", action="append", metavar="NAME:=VALUE", help="any other launch argument")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bringup",
        help="start the ROS 2 graph, one process per node (ros2 launch equivalent)",
        description="Start the cosmos_aloha ROS 2 graph from the shared node description. Sets "
        "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and "
        "FASTDDS_DEFAULT_PROFILES_FILE=<package>/config/fastdds.xml unless set; "
        "other processes on the same graph (rviz, ros2 topic, bag record) need the same.",
    )
    add_graph_arguments(parser)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    parser.add_argument("--list", action="store_true", help="print the node commands and exit")
    parser.set_defaults(func=_run)
