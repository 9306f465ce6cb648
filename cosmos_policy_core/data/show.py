"""A one-page picture of an episode for checking a recording by eye: camera contact sheet + 14 joint curves.

Top: the three cameras (rows) at evenly spaced times (columns). Bottom: proprio (solid) and action (dashed)
of each joint, left arm in the left column, right arm in the right column.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cosmos_policy_core.data.episode import CAMERAS, Episode

JOINT_LABELS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")


def contact_sheet_indices(length: int, columns: int) -> np.ndarray:
    """`columns` steps spread evenly over the episode, first and last included."""
    return np.unique(np.linspace(0, length - 1, num=min(columns, length)).round().astype(int))


def render_episode(episode: Episode, out: str | Path, columns: int = 8, label: str = "", dpi: int = 100) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = contact_sheet_indices(len(episode), columns)
    cams = [c for c in CAMERAS if c in episode.images] or sorted(episode.images)
    t = np.arange(len(episode)) / episode.fps
    fig = plt.figure(figsize=(2.0 * len(steps), 1.6 * len(cams) + 1.3 * 7 + 0.8), dpi=dpi)
    grid = fig.add_gridspec(2, 1, height_ratios=[1.6 * len(cams), 1.3 * 7], hspace=0.12)
    sheet = grid[0].subgridspec(len(cams), len(steps), wspace=0.03, hspace=0.12)
    for r, cam in enumerate(cams):
        for c, step in enumerate(steps):
            ax = fig.add_subplot(sheet[r, c])
            ax.imshow(episode.images[cam][step])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={step / episode.fps:.2f}s (#{step})", fontsize=8)
            if c == 0:
                ax.set_ylabel(cam, fontsize=8)
    joints = grid[1].subgridspec(7, 2, hspace=0.35, wspace=0.15)
    for arm, side in enumerate(("left", "right")):
        for j, name in enumerate(JOINT_LABELS):
            k = 7 * arm + j
            ax = fig.add_subplot(joints[j, arm])
            ax.plot(t, episode.qpos[:, k], lw=1.2, label="proprio")
            ax.plot(t, episode.action[:, k], lw=1.0, ls="--", label="action")
            ax.set_ylabel(f"{side}\n{name}", fontsize=7)
            ax.tick_params(labelsize=6)
            if j < 6:
                ax.set_xticklabels([])
            else:
                ax.set_xlabel("time (s)", fontsize=7)
            if j == 0 and arm == 0:
                ax.legend(fontsize=6, loc="upper right")
    status = "success" if episode.success else "failure"
    head = f"{label}: " if label else ""
    fig.suptitle(f"{head}task {episode.task!r}, {len(episode)} steps at {episode.fps:g} Hz, {status}", fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.95, bottom=0.04)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
