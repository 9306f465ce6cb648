"""`cosmos-aloha calibrate grippers|cameras|check`: write gripper and camera calibration, check zeros.

grippers and check read live joint states over ROS 2 (the driver must be running); cameras works on
image files of a chessboard or ChArUco board.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cosmos_policy_core.errors import ConfigError


def _ros_reader(timeout_s: float):
    try:
        from cosmos_aloha.arm_state_reader import RosArmStateReader
    except ImportError as exc:
        raise ConfigError(f"this command reads the robot over ROS 2 and needs rclpy (pip install '.[ros]'): {exc}") from exc
    return RosArmStateReader(timeout_s=timeout_s)


def _grippers(args) -> int:
    from cosmos_policy_core.calibration.grippers import gripper_constants_from_recordings, record_gripper_phases

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it or choose another --out")
    print("Gripper calibration: each gripper is recorded fully OPEN, then fully CLOSED.\n"
          "Follower grippers must be movable by hand: run the driver read-only (dynamixel: torque:=false) or\n"
          "torque the grippers off (see docs/hardware.md).")
    reader = _ros_reader(args.timeout)
    try:
        recordings = record_gripper_phases(reader, input, samples=args.samples, period_s=args.period,
                                           roles=args.roles)
    finally:
        reader.close()
    if set(args.roles) != {"leader", "follower"}:
        # Only one role re-recorded: keep the other role's ends from the base constants.
        from cosmos_policy_core.calibration.files import load_gripper_constants
        from cosmos_policy_core.robot.arm_layout import ArmState

        base = load_gripper_constants(args.base)
        other = ({"leader", "follower"} - set(args.roles)).pop()
        for side in ("left", "right"):
            for phase in ("open", "close"):
                joint = getattr(base, f"{other}_joint_{phase}")
                position = getattr(base, f"{other}_position_{phase}")
                recordings[(other, side, phase)] = [ArmState((0.0,) * 6, joint, position)]
    result = gripper_constants_from_recordings(recordings, name=args.name or out.stem)
    print(result.report())
    out.parent.mkdir(parents=True, exist_ok=True)
    result.constants.to_yaml(out)
    print(f"wrote {out}; use it with gripper:={out} (aloha_driver, teleop) and the bag converter")
    return 0


def _cameras(args) -> int:
    from cosmos_policy_core.calibration.cameras import BoardSpec, calibrate_camera, load_images

    board = BoardSpec(args.board, args.cols, args.rows, args.square, args.marker, args.dictionary)
    result = calibrate_camera(load_images(args.images), board, args.camera, min_views=args.min_views)
    out = Path(args.out or f"calibration/cameras/{args.camera}.yaml")
    result.intrinsics.to_yaml(out)
    report = Path(args.report or out.with_suffix(".report.json"))
    result.save_report(report)
    print(result.report_text())
    print(f"wrote {out} (ROS CameraInfo YAML) and {report}")
    if result.rms_px > args.max_rms:
        print(f"warning: RMS reprojection error {result.rms_px:.3f} px is above {args.max_rms} px; "
              "recapture with a flat board, sharp images and more tilted views", file=sys.stderr)
        return 1
    return 0


def _check(args) -> int:
    from cosmos_policy_core.calibration.check import check_arms, check_follower_qpos
    from cosmos_policy_core.robot.limits import JointLimits

    reader = _ros_reader(args.timeout)
    try:
        qpos = np.median(np.stack([reader.read_qpos() for _ in range(args.samples)]), axis=0)
        report = check_follower_qpos(qpos, JointLimits.preset(args.limits), args.tolerance)
        if args.leaders:
            arms = {f"leader_{side}": np.asarray(reader.read("leader", side).arm) for side in ("left", "right")}
            leader_report = check_arms(arms, JointLimits.aloha_wx250s(), args.tolerance)
            report = type(report)(report.arms + leader_report.arms, report.flags + leader_report.flags)
    finally:
        reader.close()
    print(report.text())
    return 0 if report.ok else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("calibrate", help="gripper constants, camera intrinsics, joint zero check")
    sub = parser.add_subparsers(dest="calibrate_command", metavar="WHAT", required=True)

    g = sub.add_parser("grippers", help="record each gripper open/closed and write the normalisation constants YAML",
                       description="With the robot's driver running (xs_sdk per arm, or aloha_driver/teleop with the "
                                   "dynamixel backend), prompts to open and close each leader and follower gripper and "
                                   "writes the GripperConstants YAML that aloha_driver, teleop and the bag converter read.")
    g.add_argument("--out", default="calibration/grippers/my_robot.yaml", help="YAML to write")
    g.add_argument("--name", default="", help="constants name (default: the file stem)")
    g.add_argument("--roles", nargs="+", choices=["leader", "follower"], default=["leader", "follower"],
                   help="grippers to record; the others keep --base's values")
    g.add_argument("--base", default="aloha2", help="preset/YAML for the roles not recorded")
    g.add_argument("--samples", type=int, default=25, help="samples per held position")
    g.add_argument("--period", type=float, default=0.02, help="seconds between samples")
    g.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a joint state")
    g.add_argument("--force", action="store_true", help="overwrite --out")
    g.set_defaults(func=_grippers)

    c = sub.add_parser("cameras", help="intrinsics from chessboard/ChArUco images -> ROS CameraInfo YAML + report",
                       description="Calibrates one camera from images (files or directories) of a planar board.")
    c.add_argument("images", nargs="+", help="image files or directories of them")
    c.add_argument("--camera", required=True, help="camera name, e.g. cam_high")
    c.add_argument("--board", choices=["chessboard", "charuco"], default="chessboard")
    c.add_argument("--cols", type=int, default=9, help="chessboard: inner corners per row; charuco: squares")
    c.add_argument("--rows", type=int, default=6, help="chessboard: inner corners per column; charuco: squares")
    c.add_argument("--square", type=float, default=0.025, help="square size in metres")
    c.add_argument("--marker", type=float, default=0.018, help="ChArUco marker size in metres")
    c.add_argument("--dictionary", default="DICT_5X5_100", help="ChArUco ArUco dictionary")
    c.add_argument("--min-views", type=int, default=8, help="fewest images with a detected board")
    c.add_argument("--max-rms", type=float, default=1.0, help="exit 1 above this reprojection RMS (px)")
    c.add_argument("--out", default="", help="YAML (default calibration/cameras/<camera>.yaml)")
    c.add_argument("--report", default="", help="JSON report (default next to the YAML)")
    c.set_defaults(func=_cameras)

    k = sub.add_parser("check", help="moves nothing: joint distances from sleep/start poses and limits",
                       description="Reads /joint_states (and with --leaders the leader arms) and flags joints that "
                                   "look mis-zeroed. Rest the arms in their cradles (sleep pose) first. Exit 1 on flags.")
    k.add_argument("--tolerance", type=float, default=0.3, help="rad a joint may differ from the pose")
    k.add_argument("--limits", default="aloha_vx300s", help="follower joint-limit preset")
    k.add_argument("--leaders", action="store_true", help="also check /leader_{left,right}/joint_states")
    k.add_argument("--samples", type=int, default=10, help="joint states to take the median of")
    k.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a joint state")
    k.set_defaults(func=_check)
