"""`cosmos-aloha dataset`: bags / ALOHA HDF5 / LeRobot -> 25 Hz training episodes (+ stats, tasks, report),
episodes -> LeRobot, and `show`.

The conversions live in cosmos_policy_core.data (convert, lerobot, lerobot_export); this module only parses and prints.
"""
from __future__ import annotations

import sys
from pathlib import Path


OVERWRITE_HELP = ("replace the dataset already in --out; the new one is swapped in only once complete, so a "
                  "failed or interrupted conversion leaves the old one as it was")


def register(subparsers) -> None:
    p = subparsers.add_parser("dataset", help="build and inspect training datasets (bags, ALOHA HDF5, LeRobot)")
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
    b.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    b.set_defaults(func=_from_bags)

    h = sub.add_parser("from-hdf5", help="resample ALOHA HDF5 episodes (50 Hz) to 25 Hz",
                       description="Keeps every second step starting at step 0 (50 -> 25 Hz).")
    h.add_argument("inputs", nargs="+", help="episode files or directories of *.hdf5")
    h.add_argument("--out", required=True, **common)
    h.add_argument("--src-fps", type=float, default=None,
                   help="input rate when the files carry no fps attribute (default 50)")
    h.add_argument("--task", default=None, help="task string (default: the file's task_description)")
    h.add_argument("--compress", action="store_true", help="store JPEG frames (with compress_len)")
    h.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    h.set_defaults(func=_from_hdf5)

    lr = sub.add_parser("from-lerobot", help="convert LeRobot datasets (format v3.0, v2.1, v2.0) into 25 Hz episodes",
                        description="Reads a local LeRobot dataset directory (meta/info.json, data/, videos/) and "
                                    "resamples it to 25 Hz: at each 40 ms tick the frame with the nearest timestamp.")
    lr.add_argument("sources", nargs="+", help="LeRobot dataset directories (each holds meta/info.json)")
    lr.add_argument("--out", required=True, **common)
    lr.add_argument("--profile", default="auto",
                    help="feature keys of the cameras, state and action: aloha (observation.images.cam_high ...), "
                         "aloha_sim (observation.images.top, left_wrist, right_wrist), a YAML path, or auto: the "
                         "first preset whose keys the dataset has")
    lr.add_argument("--task", default=None, help="task string for every episode (default: the dataset's tasks)")
    lr.add_argument("--compress", action="store_true", help="store JPEG frames (with compress_len)")
    lr.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    lr.set_defaults(func=_from_lerobot)

    tl = sub.add_parser("to-lerobot", help="write our episodes as a LeRobot v3.0 dataset (parquet + MP4)",
                        description="Camera streams become MP4 files (many episodes per file), frames parquet rows; "
                                    "meta/ holds info.json, stats.json, tasks.parquet and the episode index.")
    tl.add_argument("dataset", help="our dataset directory (episode_<i>.hdf5)")
    tl.add_argument("--out", required=True, help="output LeRobot dataset directory")
    tl.add_argument("--codec", choices=("h264", "av1"), default="h264",
                    help="video codec: h264 (default, encodes fast, decodes everywhere) or av1 (LeRobot's default)")
    tl.add_argument("--crf", type=int, default=None,
                    help="video quality, lower is closer to the original (default: 18 for h264, LeRobot's 30 for av1)")
    tl.add_argument("--pix-fmt", choices=("yuv420p", "yuv444p"), default="yuv420p",
                    help="yuv420p (default, what LeRobot records) or yuv444p (h264 only: full-resolution colour, "
                         "closer to the original on small images)")
    tl.add_argument("--overwrite", action="store_true",
                    help="replace the LeRobot dataset already in --out, once the new one is complete")
    tl.set_defaults(func=_to_lerobot)

    s = sub.add_parser("show", help="PNG of an episode: camera contact sheet + 14 joint trajectories")
    s.add_argument("dataset", help="dataset directory or an episode .hdf5 file")
    s.add_argument("--episode", type=int, default=0, help="episode index (episode_<i>.hdf5)")
    s.add_argument("--out", default=None, help="PNG path (default: <dataset>/episode_<i>.png)")
    s.add_argument("--columns", type=int, default=8, help="frames per camera in the contact sheet")
    s.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    s.set_defaults(func=_show)


def _finish(report) -> int:
    print(report.summary())
    if not report.committed:
        print(f"error: no input could be converted (see SKIPPED above); {report.output} was left as it was",
              file=sys.stderr)
        return 2
    print(f"report: {Path(report.output) / 'report.json'}")
    return 0


def _from_bags(args) -> int:
    from cosmos_policy_core.data.convert import convert_bags

    return _finish(convert_bags(args.bags, args.out, profile=args.profile, gripper=args.gripper, task=args.task,
                                sim=args.sim, compress=args.compress, overwrite=args.overwrite))


def _from_hdf5(args) -> int:
    from cosmos_policy_core.data.convert import convert_hdf5

    return _finish(convert_hdf5(args.inputs, args.out, src_fps=args.src_fps, task=args.task,
                                compress=args.compress, overwrite=args.overwrite))


def _from_lerobot(args) -> int:
    from cosmos_policy_core.data.lerobot import convert_lerobot

    return _finish(convert_lerobot(args.sources, args.out, profile=args.profile, task=args.task,
                                   compress=args.compress, overwrite=args.overwrite))


def _to_lerobot(args) -> int:
    from cosmos_policy_core.data.lerobot_export import export_lerobot
    from cosmos_policy_core.data.mp4 import VideoSettings

    video = VideoSettings(codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt)
    report = export_lerobot(args.dataset, args.out, video=video, overwrite=args.overwrite)
    print(report.summary())
    return 0


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
