"""Conversion of bags and ALOHA HDF5 episodes into a 25 Hz training dataset (episodes + stats + tasks + report).

Each bad episode raises a DataError that names its file; the dataset writer (data.writer) skips and reports it
and swaps the finished dataset into the output in one step.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cosmos_policy_core.data import resample
from cosmos_policy_core.data.bag_profile import BagProfile
from cosmos_policy_core.data.bags import IMAGE_TYPE, STRING_TYPE, BagReader, deserialize, header_stamp_ns
from cosmos_policy_core.data.episode import CAMERAS, Episode, EpisodeFile
from cosmos_policy_core.data.report import ConversionReport
from cosmos_policy_core.data.writer import ConvertedEpisode, DatasetWriter
from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.robot.gripper import GripperConstants

log = logging.getLogger(__name__)


# -- episode markers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    start_ns: int
    stop_ns: int
    task: str
    success: bool
    sim: bool = False
    terminated: bool = True   # False: a start without stop (recorder killed / bag cut mid-episode)


def episode_segments(events: list[tuple[int, dict]], bag_start_ns: int, bag_end_ns: int,
                     default_task: str = "", default_sim: bool = False) -> tuple[list[Segment], list[str]]:
    """Marker events (stamp, {"event": "start"|"stop", ...}) -> episodes; no markers: the whole bag.

    A start opens an episode, the next stop closes it (its `success`, default True); a start while one
    is open closes the open one as unterminated; a start without a stop runs to the bag end and counts as
    unterminated (success False). Returns the segments and warnings about malformed marker sequences.
    """
    if not events:
        return [Segment(bag_start_ns, bag_end_ns, default_task, True, default_sim)], []
    segments, warnings = [], []
    open_at, open_event = None, None
    for stamp, event in sorted(events, key=lambda e: e[0]):
        kind = event.get("event")
        if kind == "start":
            if open_at is not None:
                warnings.append(f"start at {stamp} while an episode was open: previous episode unterminated")
                segments.append(_segment(open_at, stamp, open_event, {}, default_task, default_sim, False))
            open_at, open_event = stamp, event
        elif kind == "stop":
            if open_at is None:
                warnings.append(f"stop at {stamp} without a start: ignored")
                continue
            segments.append(_segment(open_at, stamp, open_event, event, default_task, default_sim, True))
            open_at, open_event = None, None
        else:
            warnings.append(f"unknown episode event {event!r} ignored")
    if open_at is not None:
        warnings.append("last episode has no stop marker: kept to the bag end as a failure")
        segments.append(_segment(open_at, bag_end_ns, open_event, {}, default_task, default_sim, False))
    return segments, warnings


def _segment(start, stop, start_event, stop_event, default_task, default_sim, terminated) -> Segment:
    task = stop_event.get("task") or start_event.get("task") or default_task
    success = bool(stop_event.get("success", True)) if terminated else False
    sim = bool(start_event.get("sim", default_sim))
    return Segment(int(start), int(stop), str(task), success, sim, terminated)


def parse_episode_event(raw, log_ns: int, source: str) -> tuple[int, dict]:
    text = deserialize(raw, STRING_TYPE).data
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: episode marker {text!r} is not JSON ({exc})") from exc
    if not isinstance(event, dict):
        raise DataError(f"{source}: episode marker {text!r} is not a JSON object")
    return int(event.get("stamp_ns", log_ns)), event


# -- bags ---------------------------------------------------------------------------------------------
@dataclass
class _Stream:
    """Stamps (and, for joints, values) of one topic or joint source, in stamp order."""

    stamps: list[int] = field(default_factory=list)
    logs: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def arrays(self):
        stamps = np.asarray(self.stamps, dtype=np.int64)
        order = np.argsort(stamps, kind="stable")
        values = np.stack(self.values)[order] if self.values else None
        return stamps[order], np.asarray(self.logs, dtype=np.int64)[order], values


def _image_to_rgb(msg, source: str, topic: str) -> np.ndarray:
    """A decoded sensor_msgs/Image (rgb8 or bgr8) -> HxWx3 uint8 RGB; anything else is a DataError."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise DataError(f"{source}: {topic} has encoding {msg.encoding!r}; only rgb8 and bgr8 are supported")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if step < 3 * w or data.size < h * step:
        raise DataError(f"{source}: {topic} image {w}x{h} step {step} holds only {data.size} bytes")
    image = data[: h * step].reshape(h, step)[:, : 3 * w].reshape(h, w, 3)
    return image[..., ::-1] if msg.encoding == "bgr8" else image


def episodes_from_bag(path: str | Path, profile: BagProfile, gripper: GripperConstants | None = None,
                      task: str = "", sim: bool = False) -> Iterator[ConvertedEpisode | DataError]:
    """Yield each episode of a bag (or a DataError for an episode that cannot be converted).

    Raises DataError for problems of the whole bag (unreadable, a needed topic missing).
    """
    gripper = gripper or profile.gripper()
    source = str(path)
    with BagReader(path) as bag:
        bag.require(profile.camera_topics, "cameras")
        bag.require(profile.joint_topics, "proprio / action joint states")
        for topic in profile.camera_topics:
            if bag.topics[topic] != IMAGE_TYPE:
                raise DataError(f"{source}: {topic} is {bag.topics[topic]}, expected {IMAGE_TYPE}")
        episode_topic = profile.episode_topic if profile.episode_topic in bag.topics else None
        task = task or str(bag.custom_data.get("task", ""))   # our recorder stores its --task there

        # Pass 1: stamps of every image, joint values of every joint message, the markers.
        images = {t: _Stream() for t in profile.camera_topics}
        sources = {("proprio", i): s for i, s in enumerate(profile.proprio)}
        sources.update({("action", i): s for i, s in enumerate(profile.action)})
        joints = {key: _Stream() for key in sources}
        by_topic: dict[str, list] = {}
        for key, src in sources.items():
            by_topic.setdefault(src.topic, []).append(key)
        events = []
        log_min, log_max = None, None
        wanted = list(profile.camera_topics) + list(by_topic) + ([episode_topic] if episode_topic else [])
        for m in bag.messages(wanted):
            log_min = m.log_ns if log_min is None else min(log_min, m.log_ns)
            log_max = m.log_ns if log_max is None else max(log_max, m.log_ns)
            if m.topic == episode_topic:
                events.append(parse_episode_event(m.raw, m.log_ns, source))
                continue
            if m.topic in images:
                stamp = header_stamp_ns(m.raw) or m.log_ns
                images[m.topic].stamps.append(stamp)
                images[m.topic].logs.append(m.log_ns)
                continue
            msg = deserialize(m.raw, m.msgtype)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec or m.log_ns
            for key in by_topic[m.topic]:
                values = sources[key].extract(list(msg.name), msg.position, gripper, source)
                joints[key].stamps.append(stamp)
                joints[key].logs.append(m.log_ns)
                joints[key].values.append(values)
        empty = [t for t, s in images.items() if not s.stamps] + sorted(
            {sources[k].topic for k, s in joints.items() if not s.stamps})
        if empty:
            raise DataError(f"{source}: topics {empty} have no messages")

        image_arrays = {t: s.arrays() for t, s in images.items()}
        joint_arrays = {k: s.arrays() for k, s in joints.items()}
        all_stamps = np.concatenate([a[0] for a in list(image_arrays.values()) + list(joint_arrays.values())])
        segments, marker_warnings = episode_segments(events, int(all_stamps.min()), int(all_stamps.max()),
                                                     task, sim)
        for number, segment in enumerate(segments):
            label = f"{source} episode {number}" if len(segments) > 1 else source
            try:
                converted = _convert_segment(bag, profile, segment, image_arrays, joint_arrays, label)
            except DataError as exc:
                yield exc
                continue
            converted.warnings.extend(marker_warnings if number == 0 else [])
            if not segment.terminated:
                converted.warnings.append("episode has no stop marker (recorder stopped mid-episode): success=False")
            yield converted


def _convert_segment(bag: BagReader, profile: BagProfile, segment: Segment, image_arrays, joint_arrays,
                     label: str) -> ConvertedEpisode:
    streams: dict[str, tuple] = {}   # name -> (stamps, logs, values) restricted to the segment
    for name, (stamps, logs, values) in list(image_arrays.items()) + [
        (f"{k[0]}[{k[1]}]", v) for k, v in joint_arrays.items()
    ]:
        keep = (stamps >= segment.start_ns) & (stamps <= segment.stop_ns)
        if not keep.any():
            raise DataError(f"{label}: stream {name} has no messages inside the episode")
        streams[name] = (stamps[keep], logs[keep], None if values is None else values[keep])
    start, stop = resample.common_span({n: s[0] for n, s in streams.items()})
    ticks = resample.tick_times(start, stop, profile.fps)
    if len(ticks) < 2:
        raise DataError(f"{label}: the streams overlap for {max(0, stop - start) / 1e6:.0f} ms, "
                        "too short for one 25 Hz step")
    chosen = {n: resample.nearest_indices(s[0], ticks) for n, s in streams.items()}
    skew_ms = resample.max_skew_ns([streams[n][0][chosen[n]] for n in streams]) / 1e6
    if skew_ms > profile.max_skew_ms:
        worst = max(streams, key=lambda n: np.max(np.abs(streams[n][0][chosen[n]] - ticks)))
        raise DataError(f"{label}: cameras and joints are {skew_ms:.0f} ms apart at one tick (limit "
                        f"{profile.max_skew_ms:g} ms, worst stream {worst}); a stream stalled or clocks differ")

    def stacked(role: str, count: int) -> np.ndarray:
        parts = [streams[f"{role}[{i}]"][2][chosen[f"{role}[{i}]"]] for i in range(count)]
        return np.concatenate(parts, axis=1).astype(np.float32)

    qpos = stacked("proprio", len(profile.proprio))
    action = stacked("action", len(profile.action))

    # Pass 2: decode only the frames chosen for the ticks, reading the episode's time window.
    wanted: dict[tuple[str, int, int], list[int]] = {}
    windows = []
    for cam, topic in profile.cameras:
        stamps, logs, _ = streams[topic]
        for tick, i in enumerate(chosen[topic]):
            wanted.setdefault((topic, int(logs[i]), int(stamps[i])), []).append(tick)
        windows.extend([int(logs[chosen[topic]].min()), int(logs[chosen[topic]].max())])
    frames: dict[str, np.ndarray] = {}
    filled = {topic: np.zeros(len(ticks), dtype=bool) for topic in profile.camera_topics}
    for m in bag.messages(profile.camera_topics, start_ns=min(windows), stop_ns=max(windows) + 1):
        stamp = header_stamp_ns(m.raw) or m.log_ns
        ticks_here = wanted.get((m.topic, m.log_ns, stamp))
        if not ticks_here:
            continue
        image = _image_to_rgb(deserialize(m.raw, IMAGE_TYPE), label, m.topic)
        if m.topic not in frames:
            frames[m.topic] = np.empty((len(ticks), *image.shape), dtype=np.uint8)  # (T, H, W, 3)
        elif frames[m.topic].shape[1:] != image.shape:
            raise DataError(f"{label}: {m.topic} changes image size from {frames[m.topic].shape[1:]} to {image.shape}")
        frames[m.topic][ticks_here] = image
        filled[m.topic][ticks_here] = True
    missing = [t for t, ok in filled.items() if not ok.all()]
    if missing:
        raise DataError(f"{label}: frames of {missing} could not be read back from the bag")

    episode = Episode(
        qpos=qpos, action=action, images={cam: frames[topic] for cam, topic in profile.cameras},
        fps=profile.fps, task=segment.task, success=segment.success, sim=segment.sim,
        attrs={"source": label, "profile": profile.name},
    ).validate(label)
    return ConvertedEpisode(
        episode=episode,
        source=label,
        source_steps=max(len(s[0]) for s in streams.values()),
        dropped_frames=sum(resample.dropped_messages(s[0]) for s in streams.values()),
        duplicated_frames=sum(resample.duplicated_ticks(c) for c in chosen.values()),
        max_skew_ms=skew_ms,
        rates_hz={n: round(resample.rate_hz(s[0]), 2) for n, s in streams.items()},
    )


# -- ALOHA HDF5 ---------------------------------------------------------------------------------------
def episode_from_hdf5(path: str | Path, fps: float = 25.0, src_fps: float | None = None,
                      task: str | None = None) -> ConvertedEpisode:
    """An ALOHA HDF5 episode (raw or JPEG images, 50 Hz unless attrs['fps'] says otherwise) at `fps`."""
    path = Path(path)
    source = EpisodeFile(path, cameras=CAMERAS)
    steps = len(source)
    source_fps = float(src_fps) if src_fps is not None else source.fps
    try:
        keep = resample.subsample_indices(steps, source_fps, fps)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    if len(keep) < 2:
        raise DataError(f"{path}: {steps} steps at {source_fps:g} Hz is too short for a {fps:g} Hz episode")
    episode = source.read(cameras=CAMERAS, steps=slice(0, steps, int(keep[1] - keep[0])))
    episode.fps = fps
    if task:
        episode.task = task
    episode.attrs = {"source": str(path)}
    return ConvertedEpisode(episode=episode.validate(str(path)), source=str(path), source_steps=steps)


# -- dataset ------------------------------------------------------------------------------------------
def _progress(items, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", disable=None)


def convert_bags(bags: Iterable[str | Path], out: str | Path, profile: BagProfile | str = "cosmos",
                 gripper: str | None = None, task: str = "", sim: bool = False, compress: bool = False,
                 overwrite: bool = False) -> ConversionReport:
    """Bags -> 25 Hz ALOHA episodes in `out`, with stats.json, tasks.json and report.json."""
    profile = profile if isinstance(profile, BagProfile) else BagProfile.load(profile)
    constants = profile.gripper(gripper)
    bags = list(bags)
    paths = expand_bags(bags)
    with DatasetWriter(out, inputs=[*bags, *paths], fps=profile.fps, compress=compress, overwrite=overwrite) as writer:
        for path in _progress(paths, "bags"):
            writer.add_from(str(path), episodes_from_bag(path, profile, constants, task=task, sim=sim))
        return writer.commit()


def convert_hdf5(inputs: Iterable[str | Path], out: str | Path, fps: float = 25.0, src_fps: float | None = None,
                 task: str | None = None, compress: bool = False, overwrite: bool = False) -> ConversionReport:
    """ALOHA HDF5 episodes (files or directories of episode_*.hdf5) -> `out` at `fps`."""
    inputs = list(inputs)
    paths = expand_hdf5(inputs)
    with DatasetWriter(out, inputs=[*inputs, *paths], fps=fps, compress=compress, overwrite=overwrite) as writer:
        for path in _progress(paths, "episodes"):
            try:
                writer.add(episode_from_hdf5(path, fps=fps, src_fps=src_fps, task=task))
            except DataError as exc:
                writer.skip(str(path), exc)
        return writer.commit()


def _natural_key(path: Path):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _existing(item: Path) -> Path:
    if not item.exists():
        raise ConfigError(f"input {item} does not exist")
    return item


def expand_bags(inputs: Iterable[str | Path]) -> list[Path]:
    """Bag directories (with metadata.yaml), single .mcap/.db3 files, or directories holding bags."""
    found = []
    for item in map(Path, inputs):
        if _existing(item).is_dir() and not (item / "metadata.yaml").exists():
            inner = [p for p in item.iterdir() if not p.name.startswith(".")
                     and ((p / "metadata.yaml").exists() or p.suffix in (".mcap", ".db3"))]
            if not inner:
                raise ConfigError(f"{item} is neither a bag (no metadata.yaml) nor a directory of bags")
            found.extend(sorted(inner, key=_natural_key))
        else:
            found.append(item)
    return found


def expand_hdf5(inputs: Iterable[str | Path]) -> list[Path]:
    """Episode files, or directories searched for *.hdf5 (hidden paths, such as a conversion's temporary
    directory, left out), in natural order (episode_2 before episode_10)."""
    found = []
    for item in map(Path, inputs):
        if _existing(item).is_dir():
            files = sorted((p for p in item.rglob("*.hdf5")
                            if not any(part.startswith(".") for part in p.relative_to(item).parts)),
                           key=_natural_key)
            if not files:
                raise ConfigError(f"{item} holds no .hdf5 files")
            found.extend(files)
        else:
            found.append(item)
    return found
