"""Our episodes written as a LeRobot v3.0 dataset: what LeRobot's loader, its tools and the Hugging Face Hub read.

    meta/info.json                                  features, fps, counts, path templates
    meta/stats.json                                 per feature: min, max, mean, std, count, q01 .. q99
    meta/tasks.parquet                              task_index, task
    meta/episodes/chunk-000/file-000.parquet        one row per episode: where its rows and frames are, its stats
    data/chunk-CCC/file-FFF.parquet                 one row per frame, many episodes per file
    videos/observation.images.<cam>/chunk-CCC/file-FFF.mp4   many episodes per file, frame k at k / fps

Episode-level flags LeRobot has no column for travel as extra episode columns `cosmos_aloha/success` and
`cosmos_aloha/sim`, which LeRobot's loader carries along unread; reading them back is lerobot.py.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosmos_policy_core import atomic
from cosmos_policy_core.data.episode import CAMERAS, JOINT_NAMES, STATE_DIM, EpisodeFile, episode_paths
from cosmos_policy_core.data.lerobot import INFO_PATH, is_lerobot_dataset
from cosmos_policy_core.data.mp4 import VideoFileWriter, VideoSettings, probe
from cosmos_policy_core.data.writer import check_output_apart_from_inputs
from cosmos_policy_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
ROBOT_TYPE = "aloha"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CAMERA_KEYS = {cam: f"observation.images.{cam}" for cam in CAMERAS}
# Episode vectors by their LeRobot feature names (those of LeRobot's aloha_static_* datasets).
VECTOR_KEYS = {"qpos": "observation.state", "action": "action", "qvel": "observation.velocity",
               "effort": "observation.effort"}
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                  "task_index": "int64"}
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


@dataclass
class ExportReport:
    output: str
    fps: int = 0
    episodes: int = 0
    frames: int = 0
    tasks: list[str] = field(default_factory=list)
    data_files: int = 0
    video_files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote LeRobot {CODEBASE_VERSION} dataset {self.output}: {self.episodes} episodes, {self.frames} "
                 f"frames at {self.fps} Hz, {len(self.tasks)} tasks, {self.data_files} data file(s), "
                 f"{self.video_files} video file(s), {len(self.skipped)} skipped"]
        lines.extend(f"  SKIPPED {source}: {reason}" for source, reason in self.skipped)
        return "\n".join(lines)


# -- statistics in LeRobot's layout -------------------------------------------------------------------
def vector_stats(x_N_D: np.ndarray) -> dict[str, list]:
    x = np.asarray(x_N_D, dtype=np.float64)
    stats = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0)}
    stats.update({name: np.quantile(x, q, axis=0) for name, q in QUANTILES.items()})
    out = {k: v.tolist() for k, v in stats.items()}
    out["count"] = [int(x.shape[0])]
    return out


def channel_histogram(frames_T_H_W_3: np.ndarray) -> np.ndarray:
    """(3, 256) pixel-value counts per channel: exact statistics of uint8 images at any size."""
    return np.stack([np.bincount(frames_T_H_W_3[..., c].ravel(), minlength=256) for c in range(3)])


def image_stats(histogram_3_256: np.ndarray, frames: int) -> dict[str, list]:
    """LeRobot's image statistics: per channel, values scaled to [0, 1], each shaped (3, 1, 1); count = frames."""
    hist = histogram_3_256.astype(np.float64)
    values = np.arange(256) / 255.0
    n = hist.sum(axis=1)
    mean = hist @ values / n
    std = np.sqrt(np.maximum(hist @ values**2 / n - mean**2, 0.0))
    nonzero = hist > 0
    stats = {"min": values[nonzero.argmax(axis=1)], "max": values[255 - nonzero[:, ::-1].argmax(axis=1)],
             "mean": mean, "std": std}
    cdf = np.cumsum(hist, axis=1)
    for name, q in QUANTILES.items():
        stats[name] = values[np.array([np.searchsorted(cdf[c], q * n[c]) for c in range(3)])]
    out = {k: v.reshape(3, 1, 1).tolist() for k, v in stats.items()}
    out["count"] = [int(frames)]
    return out


# -- writing ------------------------------------------------------------------------------------------
def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """LeRobot's numbering: file-000 .. file-(chunks_size - 1) in chunk-000, then chunk-001 ..."""
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)


def _fixed_list(values_T_D: np.ndarray):
    import pyarrow as pa

    values = np.ascontiguousarray(values_T_D, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.float32()), values.shape[1])


def _tasks_table(tasks: list[str]):
    """meta/tasks.parquet as pandas writes it from LeRobot's task table (task strings as its index), so that
    LeRobot, which reads it with pandas, finds a task's index by its string."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


class LeRobotWriter:
    """Appends episodes to a LeRobot v3.0 dataset under construction in `root`; `finish` writes the metadata."""

    def __init__(self, root: Path, video: VideoSettings = VideoSettings(), data_file_size_mb: float = 100,
                 video_file_size_mb: float = 200, chunks_size: int = 1000):
        self.root = Path(root)
        self.video = video
        self.data_file_size_mb = data_file_size_mb
        self.video_file_size_mb = video_file_size_mb
        self.chunks_size = chunks_size
        self.fps: int | None = None
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.tasks: list[str] = []
        self.episodes: list[dict] = []
        self.frames = 0
        self._vectors: dict[str, list[np.ndarray]] = {key: [] for key in (*VECTOR_KEYS.values(), *INDEX_FEATURES)}
        self._histograms = {cam: np.zeros((3, 256), np.int64) for cam in CAMERAS}
        self._data = None                      # open ParquetWriter
        self._data_index = (0, 0)
        self._data_bytes = 0
        self._data_files = 0
        self._videos: dict[str, VideoFileWriter] = {}
        self._video_index = {cam: (0, 0) for cam in CAMERAS}
        self._video_files = {cam: [] for cam in CAMERAS}

    def add(self, episode: EpisodeFile) -> None:
        """Append one episode: `check` it, then write it."""
        self.write(episode, self.check(episode))

    def check(self, episode: EpisodeFile):
        """The episode's joints and attributes (an Episode without frames); DataError when it does not fit the
        dataset so far (rate, image sizes), before anything of it is written."""
        label = str(episode.path)
        fps = float(episode.fps)
        if abs(fps - round(fps)) > 1e-6 or fps <= 0:
            raise DataError(f"{label}: {fps:g} Hz is not a whole number of frames per second, which LeRobot needs")
        if self.fps is not None and int(round(fps)) != self.fps:
            raise DataError(f"{label}: {fps:g} Hz, but the dataset's episodes so far are {self.fps} Hz; export "
                            "episodes of one rate together")
        shapes = {cam: tuple(episode.frame(cam, 0).shape) for cam in CAMERAS}
        for cam, shape in shapes.items():
            if cam in self.shapes and self.shapes[cam] != shape:
                raise DataError(f"{label}: camera {cam} frames are {shape}, the dataset's so far {self.shapes[cam]}")
            if shape[0] % 2 or shape[1] % 2:
                raise DataError(f"{label}: camera {cam} frames are {shape[1]}x{shape[0]}; video needs even sizes")
        whole = episode.read(cameras=())       # frames are read per camera while writing, one camera in RAM
        self.fps = int(round(fps))
        self.shapes.update(shapes)
        return whole

    def write(self, episode: EpisodeFile, whole) -> None:
        """Append a checked episode. A DataError here (a frame that cannot be decoded) leaves the dataset
        under construction incomplete: the export stops instead of skipping."""
        T = len(whole)
        if whole.task not in self.tasks:
            self.tasks.append(whole.task)
        number = len(self.episodes)
        vectors = {VECTOR_KEYS["qpos"]: whole.qpos, VECTOR_KEYS["action"]: whole.action,
                   VECTOR_KEYS["qvel"]: whole.qvel if whole.qvel is not None else np.zeros((T, STATE_DIM), np.float32),
                   VECTOR_KEYS["effort"]: whole.effort if whole.effort is not None else np.zeros((T, STATE_DIM),
                                                                                                 np.float32)}
        index = {"timestamp": (np.arange(T) / self.fps).astype(np.float32), "frame_index": np.arange(T),
                 "episode_index": np.full(T, number), "index": self.frames + np.arange(T),
                 "task_index": np.full(T, self.tasks.index(whole.task))}
        meta = {"episode_index": number, "tasks": [whole.task], "length": T}
        meta.update(self._write_rows(vectors, index))
        stats = {key: vector_stats(v) for key, v in vectors.items()}
        stats.update({key: vector_stats(np.asarray(v, np.float64)[:, None]) for key, v in index.items()})
        for cam in CAMERAS:
            frames = episode.frames(cam)
            meta.update(self._write_video(cam, frames))
            hist = channel_histogram(frames)
            self._histograms[cam] += hist
            stats[CAMERA_KEYS[cam]] = image_stats(hist, T)
        episode.close()
        meta.update({"dataset_from_index": self.frames, "dataset_to_index": self.frames + T,
                     "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        meta.update({f"stats/{key}/{name}": value for key, s in stats.items() for name, value in s.items()})
        meta.update({"cosmos_aloha/success": bool(whole.success), "cosmos_aloha/sim": bool(whole.sim)})
        for key, values in {**vectors, **index}.items():
            self._vectors[key].append(np.asarray(values))
        self.episodes.append(meta)
        self.frames += T

    def _write_rows(self, vectors: dict, index: dict) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {key: _fixed_list(v) for key, v in vectors.items()}
        columns.update({key: pa.array(np.asarray(v).astype(INDEX_FEATURES[key])) for key, v in index.items()})
        table = pa.table(columns)
        chunk, file = self._data_index
        if self._data is None:
            path = self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = pq.ParquetWriter(path, table.schema)
            self._data_files += 1
        self._data.write_table(table, row_group_size=max(1, table.num_rows))   # one row group per episode
        self._data_bytes += table.nbytes
        if self._data_bytes >= self.data_file_size_mb * 1024**2:
            self._data.close()
            self._data, self._data_bytes = None, 0
            self._data_index = _next_file(chunk, file, self.chunks_size)
        return {"data/chunk_index": chunk, "data/file_index": file}

    def _write_video(self, cam: str, frames: np.ndarray) -> dict:
        key = CAMERA_KEYS[cam]
        chunk, file = self._video_index[cam]
        if cam not in self._videos:
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            self._videos[cam] = VideoFileWriter(path, self.fps, self.video)
            self._video_files[cam].append(path)
        start, stop = self._videos[cam].append(frames)
        if self._videos[cam].size_mb() >= self.video_file_size_mb:
            self._videos.pop(cam).close()
            self._video_index[cam] = _next_file(chunk, file, self.chunks_size)
        return {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": stop}

    def finish(self) -> None:
        """Close the open files and write meta/: episodes, tasks, stats, info."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._data is not None:
            self._data.close()
            self._data = None
        for writer in self._videos.values():
            writer.close()
        self._videos.clear()
        episodes_path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), episodes_path)
        pq.write_table(_tasks_table(self.tasks), self.root / "meta/tasks.parquet")
        stats = {key: vector_stats(np.concatenate(parts).reshape(self.frames, -1).astype(np.float64))
                 for key, parts in self._vectors.items()}
        stats.update({CAMERA_KEYS[cam]: image_stats(hist, self.frames) for cam, hist in self._histograms.items()})
        (self.root / "meta/stats.json").write_text(json.dumps(stats, indent=2))
        (self.root / INFO_PATH).write_text(json.dumps(self._info(), indent=2))

    def _info(self) -> dict:
        features = {}
        for cam in CAMERAS:
            h, w, c = self.shapes[cam]
            features[CAMERA_KEYS[cam]] = {"dtype": "video", "shape": [h, w, c],
                                          "names": ["height", "width", "channels"],
                                          "info": probe(self._video_files[cam][0])}
        for key in VECTOR_KEYS.values():
            features[key] = {"dtype": "float32", "shape": [STATE_DIM], "names": list(JOINT_NAMES), "fps": self.fps}
        for key, dtype in INDEX_FEATURES.items():
            features[key] = {"dtype": dtype, "shape": [1], "names": None, "fps": self.fps}
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": ROBOT_TYPE, "total_episodes": len(self.episodes),
            "total_frames": self.frames, "total_tasks": len(self.tasks), "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_file_size_mb, "video_files_size_in_mb": self.video_file_size_mb,
            "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH, "features": features,
        }

    def file_counts(self) -> tuple[int, int]:
        return self._data_files, sum(len(files) for files in self._video_files.values())

    def abort(self) -> None:
        if self._data is not None:
            self._data.close()
        for writer in self._videos.values():
            try:
                writer.close()
            except Exception:  # an encoder already in error: the files are being deleted anyway
                pass


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def export_lerobot(dataset: str | Path, out: str | Path, video: VideoSettings = VideoSettings(),
                   overwrite: bool = False, data_file_size_mb: float = 100, video_file_size_mb: float = 200,
                   chunks_size: int = 1000) -> ExportReport:
    """Our dataset directory (episode_*.hdf5) -> a LeRobot v3.0 dataset in `out`, written whole or not at all.

    An episode that cannot be read, or whose rate or image size differs from the first one's, is skipped and
    reported. The new dataset replaces `out` in one rename when every episode is written.
    """
    dataset, out = Path(dataset), Path(out)
    if not dataset.is_dir():
        raise ConfigError(f"{dataset} is not a directory; pass a dataset directory of episode_*.hdf5 files")
    files = sorted(episode_paths(dataset), key=_natural_key)
    if not files:
        raise ConfigError(f"{dataset} holds no *.hdf5 episodes; convert recordings first with `cosmos-aloha dataset "
                          "from-bags` / `from-hdf5`, or generate demos with `cosmos-aloha sim demos`")
    check_output_apart_from_inputs(out, [dataset])
    atomic.remove_stale(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty; choose a new --out or pass --overwrite")
        if not is_lerobot_dataset(out):
            raise ConfigError(f"{out} is not a LeRobot dataset (no {INFO_PATH}); --overwrite replaces only "
                              "LeRobot datasets, so choose a new or empty directory")
    report = ExportReport(output=str(out))
    tmp = atomic.temp_path(out)
    tmp.mkdir(parents=True)
    writer = LeRobotWriter(tmp, video, data_file_size_mb, video_file_size_mb, chunks_size)
    try:
        for path in _progress(files):
            try:
                episode = EpisodeFile(path, cameras=CAMERAS)
                checked = writer.check(episode)
            except DataError as exc:
                log.warning("skipped %s", exc)
                report.skipped.append((str(path), str(exc)))
                continue
            writer.write(episode, checked)
        if not writer.episodes:
            raise DataError(f"no episode of {dataset} could be exported: "
                            + "; ".join(reason for _, reason in report.skipped[:3]))
        writer.finish()
        atomic.replace_dir(tmp, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.fps, report.episodes, report.frames = writer.fps, len(writer.episodes), writer.frames
    report.tasks = writer.tasks
    report.data_files, report.video_files = writer.file_counts()
    return report


def _progress(items):
    from tqdm import tqdm

    return tqdm(items, desc="episodes", unit="episode", disable=None)
