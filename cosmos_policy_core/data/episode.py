"""The episode type and the ALOHA HDF5 layout (the one documented dataset format of the project).

File layout (`episode_<i>.hdf5`), as written by ALOHA's recorders:
    /observations/qpos            (T, 14) float32   proprio, policy layout, grippers normalised
    /observations/qvel, /effort   (T, 14) float32   optional (zeros when unknown)
    /observations/images/<cam>    (T, H, W, 3) uint8 raw, or (T, N) uint8 JPEG padded to N bytes
    /compress_len                 (num_cams, T)     JPEG byte lengths, cameras in sorted order
    /action                       (T, 14) float32
    attrs: sim (bool), compress (bool), fps (float), task_description (str), success (bool)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosmos_policy_core.errors import DataError

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
STATE_DIM = 14


@dataclass
class Episode:
    qpos: np.ndarray                      # (T, 14)
    action: np.ndarray                    # (T, 14)
    images: dict[str, np.ndarray]         # cam -> (T, H, W, 3) uint8 RGB
    fps: float = 25.0
    task: str = ""
    success: bool = True
    sim: bool = False
    qvel: np.ndarray | None = None
    effort: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.qpos.shape[0])

    def validate(self, source: str = "episode") -> "Episode":
        """Raise DataError naming `source` when lengths or dimensions disagree."""
        T = len(self)
        if self.qpos.ndim != 2 or self.qpos.shape[1] != STATE_DIM:
            raise DataError(f"{source}: qpos has shape {self.qpos.shape}, expected (T, {STATE_DIM})")
        if self.action.shape != (T, STATE_DIM):
            raise DataError(f"{source}: action has shape {self.action.shape}, expected ({T}, {STATE_DIM})")
        for cam, frames in self.images.items():
            if frames.ndim != 4 or frames.shape[0] != T or frames.shape[3] != 3:
                raise DataError(f"{source}: camera {cam} has frames {frames.shape}, expected ({T}, H, W, 3)")
        if not np.isfinite(self.qpos).all() or not np.isfinite(self.action).all():
            raise DataError(f"{source}: qpos/action contain NaN or Inf")
        return self


def write_episode_hdf5(path: str | Path, episode: Episode, compress: bool = False, jpeg_quality: int = 50) -> Path:
    """Write `episode` in the ALOHA layout; `compress` stores JPEG frames with `compress_len`."""
    import cv2
    import h5py

    episode.validate(str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T = len(episode)
    tmp = path.with_suffix(path.suffix + ".partial")
    with h5py.File(tmp, "w", rdcc_nbytes=2 * 1024**2) as f:
        f.attrs["sim"] = bool(episode.sim)
        f.attrs["compress"] = bool(compress)
        f.attrs["fps"] = float(episode.fps)
        f.attrs["task_description"] = episode.task
        f.attrs["success"] = bool(episode.success)
        for key, value in episode.attrs.items():
            f.attrs[key] = value
        obs = f.create_group("observations")
        obs.create_dataset("qpos", data=episode.qpos.astype(np.float32))
        zeros = np.zeros((T, STATE_DIM), np.float32)
        obs.create_dataset("qvel", data=zeros if episode.qvel is None else episode.qvel.astype(np.float32))
        obs.create_dataset("effort", data=zeros if episode.effort is None else episode.effort.astype(np.float32))
        f.create_dataset("action", data=episode.action.astype(np.float32))
        group = obs.create_group("images")
        cams = sorted(episode.images)
        if not compress:
            for cam in cams:
                frames = episode.images[cam]
                group.create_dataset(cam, data=frames, chunks=(1, *frames.shape[1:]))
        else:
            encoded = {
                cam: [
                    cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1].ravel()
                    for frame in episode.images[cam]
                ]
                for cam in cams
            }
            padded = max((len(b) for bufs in encoded.values() for b in bufs), default=0)
            lengths = np.zeros((len(cams), T), dtype=np.int64)
            for c, cam in enumerate(cams):
                data = np.zeros((T, padded), dtype=np.uint8)
                for t, buf in enumerate(encoded[cam]):
                    data[t, : len(buf)] = buf
                    lengths[c, t] = len(buf)
                group.create_dataset(cam, data=data, chunks=(1, padded))
            f.create_dataset("compress_len", data=lengths)
    tmp.replace(path)
    return path


def read_episode_hdf5(path: str | Path, cameras: tuple[str, ...] | None = None,
                      steps: slice | None = None) -> Episode:
    """Read an ALOHA episode (raw or JPEG images). Raises DataError naming the file on any problem.

    `steps` reads only those time steps (e.g. `slice(None, None, 2)` for 50 -> 25 Hz) so long episodes are
    never decoded whole.
    """
    import cv2
    import h5py

    path = Path(path)
    sel = slice(None) if steps is None else steps
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with f:
        try:
            qpos = f["observations/qpos"][sel]
            action = f["action"][sel]
            group = f["observations/images"]
        except KeyError as exc:
            raise DataError(f"{path}: missing dataset {exc}") from exc
        qvel = f["observations/qvel"][sel] if "observations/qvel" in f else None
        effort = f["observations/effort"][sel] if "observations/effort" in f else None
        cams = tuple(cameras) if cameras is not None else tuple(sorted(group.keys()))
        missing = [c for c in cams if c not in group]
        if missing:
            raise DataError(f"{path}: missing cameras {missing} (has {sorted(group.keys())})")
        lengths = f["compress_len"][()] if "compress_len" in f else None
        all_cams = sorted(group.keys())
        images = {}
        for cam in cams:
            data = group[cam]
            if data.ndim == 4:
                images[cam] = data[sel]
                continue
            if lengths is None:
                raise DataError(f"{path}: camera {cam} is JPEG-encoded but /compress_len is missing")
            row = lengths[all_cams.index(cam)]
            frames = []
            for t in range(data.shape[0])[sel]:
                buf = data[t, : int(row[t])] if row[t] else data[t]
                frame = cv2.imdecode(np.asarray(buf), cv2.IMREAD_COLOR)
                if frame is None:
                    raise DataError(f"{path}: camera {cam} frame {t} is not a decodable JPEG")
                frames.append(frame[..., ::-1])
            images[cam] = np.stack(frames)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    episode = Episode(
        qpos=np.asarray(qpos, np.float32),
        action=np.asarray(action, np.float32),
        images=images,
        fps=float(attrs.pop("fps", 50.0)),
        task=str(attrs.pop("task_description", "")),
        success=bool(attrs.pop("success", True)),
        sim=bool(attrs.pop("sim", False)),
        qvel=None if qvel is None else np.asarray(qvel, np.float32),
        effort=None if effort is None else np.asarray(effort, np.float32),
        attrs=attrs,
    )
    return episode.validate(str(path))
