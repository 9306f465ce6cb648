"""Calibration math and tools: gripper normalisation constants, camera intrinsics, pose/zero check.

Each module is pure computation over recorded data plus a thin interactive runner that the
`cosmos-aloha calibrate` CLI drives; nothing here imports ROS.
"""
