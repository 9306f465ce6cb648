"""The episode type, the ALOHA HDF5 layout (the one documented dataset format of the project) and its one reader.

File layout (`episode_<i>.hdf5`), as written by ALOHA's recorders:
    /observations/qpos            (T, 14) float32   proprio, policy layout, grippers normalised
    /observations/qvel, /effort   (T, 14) float32   optional (zeros when unknown)
    /observations/images/<cam>    (T, H, W, 3) uint8 raw, or (T, N) uint8 JPEG padded to N bytes
    /compress_len                 (num_cams, T)     JPEG byte lengths, cameras in sorted order
    /action                       (T, 14) float32
    attrs: sim (bool), compress (bool), fps (float), task_description (str), success (bool)
Files without `fps` are ALOHA recordings at 50 Hz; without `success` they count as successful demonstrations.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosmos_policy_core.errors import DataError
from cosmos_policy_core.robot.aloha import (  # noqa: F401 (CAMERAS, STATE_DIM: the episode format's names)
    CAMERAS, GRIPPER_INDICES, JOINT_NAMES, STATE_DIM, joint_lower_limits, joint_upper_limits,
)

log = logging.getLogger(__name__)

ALOHA_HDF5_FPS = 50.0   # ALOHA recorders write at DT = 0.02 s and store no rate attribute

# How far past the robot's joint limits a recorded value may lie. Further out it is not a recording of the
# robot (other units, a corrupt file, an uncalibrated gripper) and the episode is skipped instead of learned.
# The margins leave room for arms resting in their cradle (shoulder -2.05 rad, past the -1.85 rad limit),
# leader arms that reach a little further than the followers, and grippers squeezed past their ends (the sim's
# gripper reads down to about -0.54 while it squeezes the cube).
ARM_MARGIN_RAD = 0.3
GRIPPER_MARGIN = 0.6


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


def joint_bounds() -> tuple[np.ndarray, np.ndarray]:
    """(14,) lowest and highest believable joint values of a recording (policy layout): the robot's joint
    limits widened by ARM_MARGIN_RAD (arms) and GRIPPER_MARGIN (normalised grippers)."""
    margin = np.full(STATE_DIM, ARM_MARGIN_RAD)
    margin[list(GRIPPER_INDICES)] = GRIPPER_MARGIN
    return np.asarray(joint_lower_limits()) - margin, np.asarray(joint_upper_limits()) + margin


def check_joint_ranges(qpos_T_D: np.ndarray, action_T_D: np.ndarray, source: str) -> None:
    """Raise DataError naming `source`, the joint and the value when a step lies outside `joint_bounds()`."""
    lower, upper = joint_bounds()
    for what, values in (("qpos", qpos_T_D), ("action", action_T_D)):
        outside = (values < lower) | (values > upper)
        if outside.any():
            t, d = (int(i) for i in np.argwhere(outside)[0])
            count = int(outside.any(axis=1).sum())
            more = f" (and {count - 1} more steps)" if count > 1 else ""
            raise DataError(
                f"{source}: {what} {JOINT_NAMES[d]} is {float(values[t, d]):.6g} at step {t}{more}, beyond the "
                f"robot's range [{lower[d]:.3g}, {upper[d]:.3g}]; joint values must be in radians with grippers "
                "normalised to 0 (closed) .. 1 (open)")


class EpisodeFile:
    """An ALOHA HDF5 episode opened for reading: joints and attributes at once, camera frames on demand.

    Opening checks the layout (qpos and action (T, 14) and finite, every camera T frames, JPEG lengths) and
    raises DataError naming the file, so a dataset never sits decoded in RAM and a bad file fails early.
    """

    def __init__(self, path: str | Path, cameras: tuple[str, ...] | None = None):
        import h5py

        self.path = Path(path)
        self.name = self.path.stem
        try:
            with h5py.File(self.path, "r") as f:
                self._read_header(f, cameras)
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file, truncated or corrupt ({exc})") from exc
        self._file = None

    def _read_header(self, f, cameras) -> None:
        for key in ("observations/qpos", "action"):
            if key not in f:
                raise DataError(f"{self.path}: missing dataset /{key}; not an ALOHA episode")
            if f[key].ndim != 2 or f[key].shape[1] != STATE_DIM:
                raise DataError(f"{self.path}: /{key} has shape {f[key].shape}, expected (T, {STATE_DIM})")
        self.qpos = np.asarray(f["observations/qpos"][()], np.float32)
        self.action = np.asarray(f["action"][()], np.float32)
        steps = len(self.qpos)
        group = f.get("observations/images")
        if group is None:
            raise DataError(f"{self.path}: missing group /observations/images")
        self.cameras = tuple(sorted(group.keys()))
        missing = [c for c in (cameras or ()) if c not in group]
        if missing:
            raise DataError(f"{self.path}: missing cameras {missing} (has {list(self.cameras)}); "
                            f"the policy needs {list(CAMERAS)}")
        lengths = {"action": len(self.action), "qpos": steps}
        lengths.update({f"images/{c}": int(group[c].shape[0]) for c in self.cameras})
        if len(set(lengths.values())) != 1:
            raise DataError(f"{self.path}: action and frame counts differ: {lengths}")
        self._jpeg = {c: group[c].ndim == 2 for c in self.cameras}
        for cam in self.cameras:
            if group[cam].ndim not in (2, 4) or (group[cam].ndim == 4 and group[cam].shape[3] != 3):
                raise DataError(f"{self.path}: camera {cam} has shape {group[cam].shape}, expected (T, H, W, 3) "
                                "frames or (T, N) JPEG bytes")
            if group[cam].dtype != np.uint8:
                raise DataError(f"{self.path}: camera {cam} holds {group[cam].dtype} values, expected uint8 (RGB "
                                "0..255 frames or JPEG bytes)")
        self._jpeg_lengths = f["compress_len"][()] if "compress_len" in f else None
        if any(self._jpeg.values()):
            if self._jpeg_lengths is None:
                raise DataError(f"{self.path}: cameras are JPEG-encoded but /compress_len is missing")
            if self._jpeg_lengths.shape != (len(self.cameras), steps):
                raise DataError(f"{self.path}: /compress_len has shape {self._jpeg_lengths.shape}, expected "
                                f"({len(self.cameras)}, {steps}): one row per camera in sorted order")
        if not (np.isfinite(self.qpos).all() and np.isfinite(self.action).all()):
            raise DataError(f"{self.path}: qpos/action contain NaN or Inf")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        fps = attrs.pop("fps", ALOHA_HDF5_FPS)
        try:
            self.fps = float(fps)
        except (TypeError, ValueError):
            self.fps = float("nan")
        if not self.fps > 0:
            shown = repr(fps) if isinstance(fps, str) else fps
            raise DataError(f"{self.path}: attrs['fps'] is {shown}, expected the recording rate in steps per second")
        self.task = str(attrs.pop("task_description", ""))
        self.success = bool(attrs.pop("success", True))
        self.sim = bool(attrs.pop("sim", False))
        attrs.pop("compress", None)
        self.attrs = attrs
        self._optional = {k: np.asarray(f[f"observations/{k}"][()], np.float32)
                          for k in ("qvel", "effort") if f"observations/{k}" in f}

    def __len__(self) -> int:
        return int(self.qpos.shape[0])

    def __getstate__(self):
        # h5py handles do not survive pickling (DataLoader workers, torchrun spawn): reopen lazily.
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def _images(self, camera: str):
        import h5py

        if camera not in self.cameras:
            raise DataError(f"{self.path}: no camera {camera!r} (has {list(self.cameras)})")
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file[f"observations/images/{camera}"]

    def frame(self, camera: str, step: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame of `camera` at `step`."""
        data = self._images(camera)
        try:
            if not self._jpeg[camera]:
                return data[step]
            return self._decode(camera, step, data[step])
        except OSError as exc:
            raise DataError(f"{self.path}: camera {camera} frame {step} cannot be read ({exc})") from exc

    def _decode(self, camera: str, step: int, row: np.ndarray) -> np.ndarray:
        import cv2

        n = int(self._jpeg_lengths[self.cameras.index(camera), step])
        img = cv2.imdecode(np.asarray(row[:n] if n else row), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{self.path}: camera {camera} frame {step} is not a decodable JPEG")
        return np.ascontiguousarray(img[..., ::-1])   # BGR -> RGB without a negative-stride view torch refuses

    def frames(self, camera: str, steps: slice | None = None) -> np.ndarray:
        """(T', H, W, 3) uint8 RGB frames of `camera` at `steps` (all by default)."""
        sel = slice(None) if steps is None else steps
        data = self._images(camera)
        try:
            if not self._jpeg[camera]:
                return np.asarray(data[sel])
            indices = range(len(self))[sel]
            return np.stack([self._decode(camera, t, data[t]) for t in indices])
        except OSError as exc:
            raise DataError(f"{self.path}: camera {camera} frames cannot be read, truncated or corrupt "
                            f"({exc})") from exc

    def read(self, cameras: tuple[str, ...] | None = None, steps: slice | None = None) -> Episode:
        """The whole episode (or `steps` of it, e.g. `slice(0, T, 2)` for 50 -> 25 Hz) decoded in RAM."""
        sel = slice(None) if steps is None else steps
        cams = self.cameras if cameras is None else tuple(cameras)
        try:
            episode = Episode(
                qpos=self.qpos[sel], action=self.action[sel], images={c: self.frames(c, sel) for c in cams},
                fps=self.fps, task=self.task, success=self.success, sim=self.sim,
                qvel=self._optional["qvel"][sel] if "qvel" in self._optional else None,
                effort=self._optional["effort"][sel] if "effort" in self._optional else None,
                attrs=dict(self.attrs),
            )
        finally:
            self.close()
        return episode.validate(str(self.path))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_episode_hdf5(path: str | Path, cameras: tuple[str, ...] | None = None,
                      steps: slice | None = None) -> Episode:
    """Read an ALOHA episode (raw or JPEG images) whole. Raises DataError naming the file on any problem.

    `steps` reads only those time steps (e.g. `slice(None, None, 2)` for 50 -> 25 Hz) so long episodes are
    never decoded whole.
    """
    return EpisodeFile(path, cameras).read(cameras, steps)


def episode_paths(path: str | Path) -> list[Path]:
    """The episode files of a dataset directory: every `*.hdf5` below it, sorted by path, without hidden
    paths (a conversion's temporary directory beside its output)."""
    path = Path(path)
    return sorted(p for p in path.rglob("*.hdf5")
                  if not any(part.startswith(".") for part in p.relative_to(path).parts))


def load_episode_dir(path: str | Path) -> list[EpisodeFile]:
    """Every episode of a dataset directory (see `episode_paths`), opened for on-demand frame reads."""
    path = Path(path)
    if path.is_file():
        raise DataError(f"{path} is a file; pass the dataset directory that holds the episode_*.hdf5 files")
    if not path.is_dir():
        raise DataError(f"dataset directory {path} does not exist")
    files = episode_paths(path)
    if not files:
        raise DataError(f"{path} holds no *.hdf5 episodes; generate demos with `cosmos-aloha sim demos` "
                        "or convert bags with `cosmos-aloha dataset`")
    episodes = []
    for p in files:
        ep = EpisodeFile(p)
        if len(ep) == 0:
            log.warning("skipping empty episode %s", p)
            continue
        episodes.append(ep)
    return episodes
