"""LeRobot datasets (format v3.0, and v2.0 / v2.1) read into our 25 Hz episodes, and the cache `train --data` uses.

A LeRobot dataset is a directory: `meta/info.json` (features, fps, path templates), episode metadata
(`meta/episodes/chunk-*/file-*.parquet` in v3.0, `meta/episodes.jsonl` in v2.x), frames as parquet rows
(`data/...`: one row per frame with `timestamp`, `frame_index`, `episode_index`, the state and action vectors)
and camera streams as MP4 (`videos/...`) or as images inside the rows. A profile (profiles/lerobot/*.yaml)
names the features that hold our three cameras, the state and the action. Writing one: lerobot_export.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import yaml

from cosmos_policy_core.data import resample
from cosmos_policy_core.data.episode import CAMERAS, JOINT_NAMES, STATE_DIM, Episode
from cosmos_policy_core.data.report import ConversionReport
from cosmos_policy_core.data.writer import ConvertedEpisode, DatasetWriter
from cosmos_policy_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).parent / "profiles" / "lerobot"
VERSIONS = ("v2.0", "v2.1", "v3.0")
INFO_PATH = "meta/info.json"
# A frame's video time may differ from its row's timestamp by this fraction of a frame period (LeRobot's
# own loader allows 0.1 ms); further off, the nearest frame may belong to the neighbouring step.
FRAME_TOLERANCE = 0.4
CACHE_ENV = "COSMOS_ALOHA_CACHE"
STAMP_SLACK_NS = 100_000    # float32 seconds are exact to 61 us up to 1000 s


# -- profile ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeRobotProfile:
    """Which LeRobot features become our cameras, qpos, action (and optional qvel, effort)."""

    name: str
    cameras: tuple[tuple[str, str], ...]      # (our camera, LeRobot feature key)
    state: str = "observation.state"
    action: str = "action"
    velocity: str | None = None
    effort: str | None = None
    sim: bool = False

    @classmethod
    def load(cls, spec: str | Path) -> "LeRobotProfile":
        """A preset name (profiles/lerobot/<name>.yaml) or a path to a YAML file."""
        path = Path(spec)
        if not str(spec).endswith((".yaml", ".yml")):
            path = PROFILE_DIR / f"{spec}.yaml"
            if not path.exists():
                raise ConfigError(f"unknown LeRobot profile {spec!r}; known: {['auto', *preset_names()]}, "
                                  "or pass a YAML path")
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read LeRobot profile {path}: {exc}") from exc
        return cls.from_dict(data or {}, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "profile") -> "LeRobotProfile":
        missing = [k for k in ("name", "cameras") if k not in data]
        if missing:
            raise ConfigError(f"LeRobot profile {where} lacks {missing}")
        cameras = tuple((str(c), str(k)) for c, k in dict(data["cameras"]).items())
        if sorted(c for c, _ in cameras) != sorted(CAMERAS):
            raise ConfigError(f"LeRobot profile {where}: cameras must map exactly {list(CAMERAS)}, "
                              f"got {[c for c, _ in cameras]}")
        return cls(name=str(data["name"]), cameras=cameras, state=str(data.get("state", "observation.state")),
                   action=str(data.get("action", "action")), velocity=data.get("velocity") or None,
                   effort=data.get("effort") or None, sim=bool(data.get("sim", False)))

    def missing_features(self, features: dict) -> list[str]:
        return [k for k in (*(key for _, key in self.cameras), self.state, self.action) if k not in features]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve_profile(spec: str | Path, features: dict, source: str) -> LeRobotProfile:
    """`spec` loaded; "auto" picks the first preset whose features the dataset has all of."""
    if spec != "auto":
        return LeRobotProfile.load(spec)
    presets = [LeRobotProfile.load(name) for name in preset_names()]
    for profile in presets:
        if not profile.missing_features(features):
            return profile
    lacking = "; ".join(f"{p.name} needs {p.missing_features(features)}" for p in presets)
    cams = sorted(k for k, f in features.items() if f.get("dtype") in ("video", "image"))
    raise DataError(f"{source}: no LeRobot profile fits its features ({lacking}). Its cameras are {cams}; the "
                    f"policy needs three ({', '.join(CAMERAS)}): write a profile YAML that maps them "
                    f"(see {PROFILE_DIR / 'aloha.yaml'}) and pass --profile PATH")


# -- reading ------------------------------------------------------------------------------------------
def is_lerobot_dataset(path: str | Path) -> bool:
    return (Path(path) / INFO_PATH).is_file()


def _read_json(path: Path, source: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{source}: {path.name} is missing ({path}); not a LeRobot dataset, or an incomplete "
                        "download") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: {path} is not readable JSON ({exc})") from exc


def _read_jsonl(path: Path, source: str) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"{source}: {path} is missing; a v2.x dataset lists its episodes there") from exc
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: {path} has a line that is not JSON ({exc})") from exc


def _read_parquet(path: Path, source: str, columns=None, filters=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{source}: {path} is missing")
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{source}: {path} is not a readable parquet file, truncated or corrupt ({exc})") from exc


def feature_width(feature: dict) -> int:
    shape = [int(s) for s in feature.get("shape") or []]
    return int(np.prod(shape)) if shape else 0


def joint_order(feature: dict) -> np.ndarray | None:
    """Index array putting a feature's named joints into the ALOHA layout; None when already in it or unnamed."""
    names = feature.get("names")
    if isinstance(names, dict):
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == 1 and isinstance(names[0], list):
        names = names[0]
    if not isinstance(names, list) or sorted(map(str, names)) != sorted(JOINT_NAMES):
        return None
    order = np.array([names.index(n) for n in JOINT_NAMES])
    return None if (order == np.arange(STATE_DIM)).all() else order


class LeRobotSource:
    """A local LeRobot dataset opened for reading: its metadata at once, one episode's rows and frames on demand."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.label = str(self.root)
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a directory; pass the LeRobot dataset's root (it holds "
                            "meta/info.json)")
        self.info = _read_json(self.root / INFO_PATH, self.label)
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in VERSIONS:
            raise DataError(f"{self.root / INFO_PATH}: codebase_version {self.version!r} is not one this reader "
                            f"knows ({', '.join(VERSIONS)})")
        try:
            self.fps = float(self.info["fps"])
            self.features: dict = dict(self.info["features"])
            self.data_path = str(self.info["data_path"])
        except KeyError as exc:
            raise DataError(f"{self.root / INFO_PATH}: missing field {exc}") from exc
        self.video_path = self.info.get("video_path")
        self.chunks_size = int(self.info.get("chunks_size", 1000))
        self.v3 = self.version == "v3.0"
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()

    def _read_tasks(self) -> dict[int, str]:
        if not self.v3:
            rows = _read_jsonl(self.root / "meta/tasks.jsonl", self.label)
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        table = _read_parquet(self.root / "meta/tasks.parquet", self.label)
        # Written by pandas with the task strings as the index: a column "task", or an unnamed index column.
        names = [n for n in table.column_names if n != "task_index"]
        if "task_index" not in table.column_names or not names:
            raise DataError(f"{self.label}: meta/tasks.parquet has columns {table.column_names}; expected "
                            "task_index and task")
        task_col = "task" if "task" in names else names[0]
        return dict(zip(map(int, table.column("task_index").to_pylist()), map(str, table.column(task_col).to_pylist())))

    def _read_episodes(self) -> list[dict]:
        if not self.v3:
            rows = _read_jsonl(self.root / "meta/episodes.jsonl", self.label)
        else:
            files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise DataError(f"{self.label}: meta/episodes/chunk-*/file-*.parquet is missing; a v3.0 dataset "
                                "lists its episodes there")
            rows = []
            for path in files:
                names = [n for n in _schema_names(path, self.label) if not n.startswith("stats/")]
                rows.extend(_read_parquet(path, self.label, columns=names).to_pylist())
        for row in rows:
            if "episode_index" not in row:
                raise DataError(f"{self.label}: an episode record lacks episode_index: {sorted(row)[:8]}")
        return sorted(rows, key=lambda r: int(r["episode_index"]))

    def check(self, profile: LeRobotProfile) -> None:
        """Raise DataError when the dataset lacks a profile feature or a vector has the wrong width."""
        missing = profile.missing_features(self.features)
        if missing:
            raise DataError(f"{self.label}: meta/info.json has no feature {missing} (profile {profile.name}); its "
                            f"features are {sorted(self.features)}. Pass --profile with a YAML that names them")
        for role, key in (("state", profile.state), ("action", profile.action)):
            width = feature_width(self.features[key])
            if width != STATE_DIM:
                raise DataError(f"{self.label}: {role} feature {key!r} has shape {self.features[key].get('shape')}; "
                                f"the ALOHA layout needs {STATE_DIM} values ({', '.join(JOINT_NAMES)})")
        for cam, key in profile.cameras:
            dtype = self.features[key].get("dtype")
            if dtype not in ("video", "image"):
                raise DataError(f"{self.label}: camera {cam} feature {key!r} has dtype {dtype!r}, not video or image")
            if dtype == "video" and not self.video_path:
                raise DataError(f"{self.label}: {key} is a video feature but meta/info.json has no video_path")

    def episode_task(self, meta: dict, task_index: int | None) -> str:
        tasks = meta.get("tasks")
        if isinstance(tasks, list) and tasks:
            return str(tasks[0])
        if isinstance(tasks, str):
            return tasks
        return self.tasks.get(int(task_index), "") if task_index is not None else ""

    def data_file(self, meta: dict) -> Path:
        index = int(meta["episode_index"])
        if self.v3:
            return self.root / self.data_path.format(chunk_index=int(meta["data/chunk_index"]),
                                                     file_index=int(meta["data/file_index"]))
        return self.root / self.data_path.format(episode_chunk=index // self.chunks_size, episode_index=index)

    def video_file(self, meta: dict, key: str) -> tuple[Path, float]:
        """The MP4 holding `key` for this episode and the time at which the episode starts in it."""
        index = int(meta["episode_index"])
        if not self.v3:
            return self.root / str(self.video_path).format(episode_chunk=index // self.chunks_size, video_key=key,
                                                            episode_index=index), 0.0
        try:
            path = str(self.video_path).format(video_key=key, chunk_index=int(meta[f"videos/{key}/chunk_index"]),
                                               file_index=int(meta[f"videos/{key}/file_index"]))
            return self.root / path, float(meta[f"videos/{key}/from_timestamp"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{self.label}: episode {index}: meta/episodes has no {exc} for video {key}") from exc

    def rows(self, meta: dict, columns: list[str]):
        """This episode's data rows (pyarrow table, in frame order) with `columns`."""
        index = int(meta["episode_index"])
        path = self.data_file(meta)
        wanted = list(dict.fromkeys(["episode_index", "frame_index", "timestamp", *columns]))
        present = set(_schema_names(path, self.label))
        absent = [c for c in wanted if c not in present]
        if absent:
            raise DataError(f"{self.label}: {path} has no column {absent}")
        table = _read_parquet(path, self.label, columns=wanted, filters=[("episode_index", "=", index)])
        if table.num_rows == 0:
            raise DataError(f"{self.label}: episode {index} has no rows in {path}")
        order = np.argsort(table.column("frame_index").to_numpy(), kind="stable")
        return table.take(order)


def _schema_names(path: Path, source: str) -> list[str]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{source}: {path} is missing")
    try:
        return pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        raise DataError(f"{source}: {path} is not a readable parquet file, truncated or corrupt ({exc})") from exc


def _vectors(table, key: str, width: int, label: str) -> np.ndarray:
    """A list column of `width` floats per row -> (T, width) float32; a row of another width is a DataError."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(key).combine_chunks()
    if column.null_count:
        raise DataError(f"{label}: {key} is empty in {column.null_count} rows")
    if pa.types.is_fixed_size_list(column.type):
        if column.type.list_size != width:
            raise DataError(f"{label}: {key} has {column.type.list_size} values per frame, expected {width}")
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy()
        if (lengths != width).any():
            bad = int(np.argmax(lengths != width))
            raise DataError(f"{label}: {key} has {int(lengths[bad])} values at frame {bad}, expected {width}")
    else:
        raise DataError(f"{label}: {key} is a {column.type} column, expected a list of {width} numbers")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(column), width)


def _decode_images(table, key: str, picks: np.ndarray, root: Path, label: str) -> np.ndarray:
    """Image-typed feature (a struct of encoded `bytes` and `path` per row) -> (N, H, W, 3) uint8 RGB."""
    import cv2

    column = table.column(key).combine_chunks()
    frames = []
    for i in picks:
        item = column[int(i)].as_py() or {}
        data = item.get("bytes") if isinstance(item, dict) else None
        if data is None and isinstance(item, dict) and item.get("path"):
            try:
                data = (root / item["path"]).read_bytes()
            except OSError as exc:
                raise DataError(f"{label}: {key} frame {int(i)}: image file {item['path']} unreadable ({exc})") from exc
        image = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise DataError(f"{label}: {key} frame {int(i)} is not a decodable image")
        frames.append(image[..., ::-1])
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise DataError(f"{label}: {key} changes image size within the episode: {sorted(shapes)}")
    return np.stack(frames)


def episodes_from_lerobot(root: str | Path, profile: str | Path | LeRobotProfile = "auto", fps: float = 25.0,
                          task: str | None = None) -> Iterator[ConvertedEpisode | DataError]:
    """Yield each episode of a LeRobot dataset at `fps` (or a DataError for an episode that cannot be converted).

    Resampling follows the bag rule (data/resample.py): ticks every 1/fps from the episode's first to its last
    frame timestamp, each tick taking the nearest frame. Raises DataError for problems of the whole dataset.
    """
    from cosmos_policy_core.data import mp4

    source = LeRobotSource(root)
    if not isinstance(profile, LeRobotProfile):
        profile = resolve_profile(profile, source.features, source.label)
    source.check(profile)
    optional = {name: key for name, key in (("qvel", profile.velocity), ("effort", profile.effort))
                if key and key in source.features and feature_width(source.features[key]) == STATE_DIM}
    orders = {key: joint_order(source.features[key]) for key in (profile.state, profile.action, *optional.values())}
    images = [key for _, key in profile.cameras if source.features[key]["dtype"] == "image"]
    tolerance = FRAME_TOLERANCE / source.fps
    for meta in source.episodes:
        index = int(meta["episode_index"])
        label = f"{source.label} episode {index}"
        try:
            table = source.rows(meta, [profile.state, profile.action, *optional.values(), *images,
                                       *(["task_index"] if "task_index" in source.features else [])])
            length = int(meta.get("length", table.num_rows))
            if length != table.num_rows:
                raise DataError(f"{label}: the episode metadata says {length} frames, the data has {table.num_rows}")
            vectors = {}
            for key in (profile.state, profile.action, *optional.values()):
                values = _vectors(table, key, STATE_DIM, label)
                vectors[key] = values if orders[key] is None else values[:, orders[key]]
            seconds = table.column("timestamp").to_numpy().astype(np.float64)
            stamps = np.round(seconds * 1e9).astype(np.int64)
            if (np.diff(stamps) < 0).any():
                raise DataError(f"{label}: timestamps go backwards at frame {int(np.argmax(np.diff(stamps) < 0)) + 1}")
            # Timestamps are float32 seconds: the last one may sit a few microseconds short of its true time,
            # which must not drop the tick it falls on.
            ticks = resample.tick_times(int(stamps[0]), int(stamps[-1]) + STAMP_SLACK_NS, fps)
            if len(ticks) < 2:
                raise DataError(f"{label}: {table.num_rows} frames span {(stamps[-1] - stamps[0]) / 1e6:.0f} ms, too "
                                f"short for one {fps:g} Hz step")
            chosen = resample.nearest_indices(stamps, ticks)
            frames, skew = {}, 0.0
            for cam, key in profile.cameras:
                if key in images:
                    frames[cam] = _decode_images(table, key, chosen, source.root, label)
                    continue
                path, start = source.video_file(meta, key)
                picks, inverse = np.unique(chosen, return_inverse=True)
                decoded, offset = mp4.read_frames(path, start + seconds[picks], tolerance, f"{label} {key}")
                frames[cam] = decoded[inverse]
                skew = max(skew, offset)
            task_index = table.column("task_index")[0].as_py() if "task_index" in table.column_names else None
            success, sim = _episode_flags(meta, profile.sim)
            episode = Episode(
                qpos=vectors[profile.state][chosen], action=vectors[profile.action][chosen], images=frames, fps=fps,
                task=task or source.episode_task(meta, task_index), success=success, sim=sim,
                qvel=vectors[optional["qvel"]][chosen] if "qvel" in optional else None,
                effort=vectors[optional["effort"]][chosen] if "effort" in optional else None,
                attrs={"source": label, "profile": profile.name},
            )
            warnings = [f"{key}: joints reordered from the dataset's names into the ALOHA layout"
                        for key, order in orders.items() if order is not None]
            yield ConvertedEpisode(
                episode=episode.validate(label), source=label, source_steps=table.num_rows,
                dropped_frames=resample.dropped_messages(stamps),
                duplicated_frames=resample.duplicated_ticks(chosen), max_skew_ms=skew * 1e3,
                rates_hz={"frames": round(resample.rate_hz(stamps), 2)}, warnings=warnings,
            )
        except DataError as exc:
            yield exc


def _episode_flags(meta: dict, sim: bool) -> tuple[bool, bool]:
    """(success, sim): flags our exporter stores beside LeRobot's episode columns. Episodes without them are
    demonstrations (successful), simulated when the profile says so."""
    success, stored_sim = meta.get("cosmos_aloha/success"), meta.get("cosmos_aloha/sim")
    return (True if success is None else bool(success)), (sim if stored_sim is None else bool(stored_sim))


def convert_lerobot(sources: Iterable[str | Path], out: str | Path, profile: str | Path = "auto", fps: float = 25.0,
                    task: str | None = None, compress: bool = False, overwrite: bool = False) -> ConversionReport:
    """LeRobot dataset directories -> `fps` ALOHA episodes in `out`, with stats.json, tasks.json and report.json."""
    sources = [Path(s) for s in sources]
    with DatasetWriter(out, inputs=sources, fps=fps, compress=compress, overwrite=overwrite) as writer:
        for root in sources:
            writer.add_from(str(root), _progress(episodes_from_lerobot(root, profile, fps=fps, task=task), root))
        return writer.commit()


def _progress(items, root: Path):
    from tqdm import tqdm

    return tqdm(items, desc=f"episodes of {root.name}", unit="episode", disable=None)


# -- the training cache -------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where `train --data LEROBOT_DIR` keeps converted episodes: $COSMOS_ALOHA_CACHE, else
    $XDG_CACHE_HOME/cosmos_aloha, else ~/.cache/cosmos_aloha; one subdirectory per dataset under lerobot/."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cosmos_aloha"


def cache_dir_for(source: str | Path) -> Path:
    resolved = Path(source).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return cache_root() / "lerobot" / f"{resolved.name}-{digest}"


def fingerprint(root: str | Path) -> str:
    """Changes when any file of the dataset changes (path, size, modification time)."""
    root = Path(root)
    h = hashlib.sha256()
    for sub in ("meta", "data", "videos", "images"):
        for path in sorted((root / sub).rglob("*")) if (root / sub).is_dir() else ():
            if path.is_file():
                st = path.stat()
                h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_episodes(source: str | Path, profile: str = "auto", convert: bool = True) -> Path:
    """Our episodes of a LeRobot dataset for training, converted into `cache_dir_for(source)` on first use
    and again whenever the dataset or the profile changes. `convert=False` only waits for another process's
    conversion to be there (ranks other than 0 under torchrun) and raises when it is not."""
    cache = cache_dir_for(source)
    stamp = {"source": str(Path(source).resolve()), "fingerprint": fingerprint(source), "profile": str(profile)}
    stamp_path = cache / "lerobot_source.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        log.info("using the converted episodes of %s in %s", source, cache)
        return cache
    if not convert:
        raise DataError(f"{cache} holds no current conversion of {source}; run `cosmos-aloha dataset from-lerobot "
                        f"{source} --out DIR` and train on DIR")
    log.info("converting LeRobot dataset %s into %s (once; reused while the dataset is unchanged)", source, cache)
    stamp_path.unlink(missing_ok=True)    # the writer replaces only directories that hold dataset files
    report = convert_lerobot([source], cache, profile=profile, overwrite=True)
    if not report.episodes:
        reasons = "; ".join(s.reason for s in report.skipped[:3])
        raise DataError(f"no episode of {source} could be converted for training: {reasons}")
    for skipped in report.skipped:
        log.warning("skipped %s: %s", skipped.source, skipped.reason)
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return cache
