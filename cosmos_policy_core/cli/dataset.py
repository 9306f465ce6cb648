"""`cosmos-aloha dataset`: bags / ALOHA HDF5 -> 25 Hz training episodes (+ stats, tasks, report), and `show`.

The conversion itself lives in cosmos_policy_core.data.convert; this module only parses and prints.
"""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("dataset", help="build and inspect training datasets (bags, ALOHA HDF5)")
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    common = dict(help="output dataset directory (episode_<i>.hdf5, stats.json, tasks.json, report.json)")

    b = sub.add_parser("from-bags", help="convert rosbag2 bags (MCAP or sqlite3) into 25 Hz episodes",
                       description="Cameras and joints are aligned by header stamp: at each 40 ms tick every "
                                   "stream takes its nearest message; actions come from the same ticks.")
    b.add_argument("bags", nargs="+", help="bag directories, .mcap/.db3 files, or directories of bags")
    b.add_argument("--out", required=True, **common)
    b.add_argument("--profile", default="cosmos",
                   help="topic layout: cosmos (our graph), interbotix (ALOHA 2 ROS 2 stack), or a YAML path")
    b.add_argument("--gripper", default=None,
                   help="gripper constants: aloha2, original_aloha or a calibration YAML (default: the profile's)")
    b.add_argument("--task", default="", help="task string for episodes whose markers carry none")
    b.add_argument("--sim", action="store_true", help="mark the episodes as simulated")
    b.add_argument("--compress", action="store_true", help="store JPEG frames (with compress_len)")
    b.add_argument("--overwrite", action="store_true", help="replace episodes already in --out")
    b.set_defaults(func=_from_bags)

    h = sub.add_parser("from-hdf5", help="resample ALOHA HDF5 episodes (50 Hz) to 25 Hz",
                       description="Keeps every second step starting at step 0 (50 -> 25 Hz).")
    h.add_argument("inputs", nargs="+", help="episode files or directories of *.hdf5")
    h.add_argument("--out", required=True, **common)
    h.add_argument("--src-fps", type=float, default=None,
                   help="input rate when the files carry no fps attribute (default 50)")
    h.add_argument("--task", default=None, help="task string (default: the file's task_description)")
    h.add_argument("--compress", action="store_true", help="store JPEG frames (with compress_len)")
    h.add_argument("--overwrite", action="store_true", help="replace episodes already in --out")
    h.set_defaults(func=_from_hdf5)

    s = sub.add_parser("show", help="PNG of an episode: camera contact sheet + 14 joint trajectories")
    s.add_argument("dataset", help="dataset directory or an episode .hdf5 file")
    s.add_argument("--episode", type=int, default=0, help="episode index (episode_<i>.hdf5)")
    s.add_argument("--out", default=None, help="PNG path (default: <dataset>/episode_<i>.png)")
    s.add_argument("--columns", type=int, default=8, help="frames per camera in the contact sheet")
    s.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    s.set_defaults(func=_show)


def _finish(report) -> int:
    print(report.summary())
    print(f"report: {Path(report.output) / 'report.json'}")
    return 0 if report.episodes else 1


def _from_bags(args) -> int:
    from cosmos_policy_core.data.convert import convert_bags

    return _finish(convert_bags(args.bags, args.out, profile=args.profile, gripper=args.gripper, task=args.task,
                                sim=args.sim, compress=args.compress, overwrite=args.overwrite))


def _from_hdf5(args) -> int:
    from cosmos_policy_core.data.convert import convert_hdf5

    return _finish(convert_hdf5(args.inputs, args.out, src_fps=args.src_fps, task=args.task,
                                compress=args.compress, overwrite=args.overwrite))


def _show(args) -> int:
    from cosmos_policy_core.data.episode import read_episode_hdf5
    from cosmos_policy_core.data.show import render_episode
    from cosmos_policy_core.errors import DataError

    root = Path(args.dataset)
    path = root if root.is_file() else root / f"episode_{args.episode}.hdf5"
    if not path.exists():
        raise DataError(f"{path} does not exist (dataset has {len(list(root.glob('episode_*.hdf5')))} episodes)")
    out = Path(args.out) if args.out else path.with_suffix(".png")
    render_episode(read_episode_hdf5(path), out, columns=args.columns, label=path.name, dpi=args.dpi)
    print(f"wrote {out}")
    return 0
