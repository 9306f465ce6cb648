"""rosbag2 bags through `rosbags`: a crash-tolerant split MCAP writer and a message reader for conversion.

Bytes are stored exactly as they came off the wire (CDR), so bags from `ros2 bag record` and ours read alike.
"""
from __future__ import annotations

import logging
import shutil
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import yaml

from cosmos_policy_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
BAG_VERSION = 9  # rosbag2 metadata version written (Jazzy/Kilted); rosbags and ros2 bag >= Iron read it


@lru_cache(maxsize=1)
def typestore():
    """The message definitions used to write schemas and decode messages (ROS 2 Kilted)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def deserialize(raw: bytes | memoryview, msgtype: str):
    """CDR bytes -> rosbags message object.

    rosbags' own `deserialize_cdr` rejects more than 3 trailing bytes, but Fast DDS serializes some
    messages (a JointState with empty velocity/effort) with 8 bytes of tail padding; readers ignore the
    tail, so do we.
    """
    store = typestore()
    if len(raw) < 4 or bytes(raw[:2]) not in (b"\x00\x00", b"\x00\x01"):
        raise DataError(f"a {msgtype} message has no CDR encapsulation header ({len(raw)} bytes)")
    msgdef = store.get_msgdef(msgtype)
    func = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    try:
        message, _ = func(memoryview(raw)[4:], 0, msgdef.cls, store)
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise DataError(f"a {msgtype} message does not decode: {exc}") from exc
    return message


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """header.stamp of a serialized stamped message (Header is its first field), without decoding it."""
    fmt = "<iI" if raw[1] else ">iI"
    sec, nanosec = struct.unpack_from(fmt, raw, 4)
    return sec * 1_000_000_000 + nanosec


# -- QoS as recorded in metadata.yaml (rosbag2 v9 form) ------------------------------------------------
def qos_from_dict(qos: dict):
    """A plain QoS description (names as in metadata.yaml) -> rosbags `Qos`."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def when(key):
        value = qos.get(key, {"sec": 0, "nsec": 0})
        return QosTime(int(value["sec"]), int(value["nsec"]))

    try:
        return Qos(
            history=QosHistory[str(qos.get("history", "keep_last")).upper()],
            depth=int(qos.get("depth", 10)),
            reliability=QosReliability[str(qos.get("reliability", "reliable")).upper()],
            durability=QosDurability[str(qos.get("durability", "volatile")).upper()],
            deadline=when("deadline"),
            lifespan=when("lifespan"),
            liveliness=QosLiveliness[str(qos.get("liveliness", "automatic")).upper()],
            liveliness_lease_duration=when("liveliness_lease_duration"),
            avoid_ros_namespace_conventions=bool(qos.get("avoid_ros_namespace_conventions", False)),
        )
    except KeyError as exc:
        raise ConfigError(f"QoS {qos} has an unknown policy value {exc}") from exc


@dataclass(frozen=True)
class TopicSpec:
    """A recorded topic: name, ROS 2 type (`sensor_msgs/msg/Image`) and the publishers' offered QoS."""

    topic: str
    msgtype: str
    offered_qos: tuple[dict, ...] = ()


@dataclass
class _FileInfo:
    path: str
    start_ns: int
    end_ns: int
    count: int
    counts: dict[str, int] = field(default_factory=dict)


class SplitBagWriter:
    """Writes a rosbag2 directory as a sequence of complete `.mcap` files, closing one every `split_seconds`.

    metadata.yaml is written at open and rewritten atomically after every closed file, and only lists
    closed files, so a recorder killed at any moment leaves a bag that `ros2 bag info`/`play`, rosbags
    and mcap readers open; it loses at most the file being written (<= `split_seconds` of data).
    Files go through rosbags' MCAP storage writer; message definitions and QoS strings are computed once
    per topic, because rosbags' high-level Writer re-serializes them with ruamel.yaml (~80 ms each), which
    stalled the recorder long enough at every split for DDS to drop camera frames.
    """

    def __init__(self, path: str | Path, split_seconds: float = 2.0, compress: bool = False,
                 custom_data: dict[str, str] | None = None):
        self.path = Path(path)
        if self.path.exists() and any(self.path.iterdir()):
            raise DataError(f"{self.path} exists and is not empty; choose a new bag directory")
        if split_seconds <= 0:
            raise ConfigError(f"split_seconds must be > 0, got {split_seconds}")
        self.split_ns = int(split_seconds * 1e9)
        self.compress = compress
        self.custom_data = dict(custom_data or {})
        self.topics: dict[str, TopicSpec] = {}
        self.files: list[_FileInfo] = []
        self._connections: dict[str, object] = {}    # topic -> rosbags Connection (ids stable across files)
        self._qos_text: dict[str, str] = {}          # topic -> offered QoS as stored in the MCAP channel
        self._storage = None
        self._storage_dir: Path | None = None
        self._current: _FileInfo | None = None
        self._closed = False
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_metadata()

    # -- public API ------------------------------------------------------------------------------
    def add_topic(self, spec: TopicSpec) -> None:
        from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinition, MessageDefinitionFormat
        from rosbags.rosbag2.metadata import dump_qos_v9

        if spec.topic in self.topics:
            return
        store = typestore()
        if spec.msgtype not in store.types:
            raise ConfigError(f"topic {spec.topic}: type {spec.msgtype} is unknown to the rosbags typestore")
        msgdef, _ = store.generate_msgdef(spec.msgtype, ros_version=2)
        qos = [qos_from_dict(q) for q in spec.offered_qos]
        self.topics[spec.topic] = spec
        self._connections[spec.topic] = Connection(
            id=len(self._connections) + 1, topic=spec.topic, msgtype=spec.msgtype,
            msgdef=MessageDefinition(MessageDefinitionFormat.MSG, msgdef), digest=store.hash_rihs01(spec.msgtype),
            msgcount=0, ext=ConnectionExtRosbag2("cdr", qos), owner=self,
        )
        self._qos_text[spec.topic] = _yaml_dump(dump_qos_v9(qos)).strip()
        if self._storage is not None:
            self._add_to_storage(spec.topic)

    def write(self, topic: str, t_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message received at `t_ns` (log time)."""
        if topic not in self.topics:
            raise ConfigError(f"topic {topic} was not added to the bag before writing")
        if self._current is not None and t_ns - self._current.start_ns >= self.split_ns:
            self.split()
        if self._storage is None:
            self._open_file(t_ns)
        self._storage.write(self._connections[topic], t_ns, data)
        info = self._current
        info.start_ns = min(info.start_ns, t_ns)
        info.end_ns = max(info.end_ns, t_ns)
        info.count += 1
        info.counts[topic] = info.counts.get(topic, 0) + 1

    def split_if_due(self, now_ns: int) -> None:
        """Close the current file when it is older than `split_seconds` (call from a timer when idle)."""
        if self._current is not None and now_ns - self._current.start_ns >= self.split_ns:
            self.split()

    def split(self) -> None:
        """Close the file being written (it becomes part of the bag) and rewrite metadata.yaml."""
        if self._storage is None:
            return
        storage, info, tmp_dir = self._storage, self._current, self._storage_dir
        self._storage, self._current, self._storage_dir = None, None, None
        storage.close(BAG_VERSION, _yaml_dump(self._info([*self.files, info])).strip())
        storage.path.replace(self.path / info.path)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        self.files.append(info)
        self._write_metadata()

    def close(self) -> None:
        if self._closed:
            return
        self.split()
        self._closed = True
        self._write_metadata()
        log.info("closed bag %s: %d files, %d messages", self.path, len(self.files),
                 sum(f.count for f in self.files))

    @property
    def message_count(self) -> int:
        return sum(f.count for f in self.files) + (self._current.count if self._current else 0)

    # -- internals -------------------------------------------------------------------------------
    def _open_file(self, t_ns: int) -> None:
        from rosbags.rosbag2.enums import CompressionMode
        from rosbags.rosbag2.storage_mcap import McapWriter

        index = len(self.files)
        # McapWriter names its file after its directory; the file is moved into the bag when closed.
        tmp_dir = self.path / f".writing_{index}"
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        tmp_dir.mkdir()
        self._storage = McapWriter(tmp_dir, CompressionMode.STORAGE if self.compress else CompressionMode.NONE)
        self._storage_dir = tmp_dir
        self._current = _FileInfo(f"{self.path.name}_{index}.mcap", t_ns, t_ns, 0)
        self._types_in_file: set[str] = set()
        for topic in self.topics:
            self._add_to_storage(topic)

    def _add_to_storage(self, topic: str) -> None:
        connection = self._connections[topic]
        if connection.msgtype not in self._types_in_file:
            self._storage.add_msgtype(connection)
            self._types_in_file.add(connection.msgtype)
        self._storage.add_connection(connection, self._qos_text[topic])

    def _info(self, files: list[_FileInfo]) -> dict:
        from rosbags.rosbag2.metadata import dump_qos_v9

        start = min((f.start_ns for f in files), default=0)
        end = max((f.end_ns for f in files), default=0)
        totals: dict[str, int] = {}
        for f in files:
            for topic, n in f.counts.items():
                totals[topic] = totals.get(topic, 0) + n
        return {
            "version": BAG_VERSION,
            "storage_identifier": "mcap",
            "relative_file_paths": [f.path for f in files],
            "duration": {"nanoseconds": max(0, end - start)},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": sum(f.count for f in files),
            "topics_with_message_count": [
                {
                    "topic_metadata": {
                        "name": topic,
                        "type": c.msgtype,
                        "serialization_format": "cdr",
                        "offered_qos_profiles": dump_qos_v9(c.ext.offered_qos_profiles),
                        "type_description_hash": c.digest,
                    },
                    "message_count": totals.get(topic, 0),
                }
                for topic, c in self._connections.items()
            ],
            "compression_format": "",
            "compression_mode": "",
            "files": [
                {
                    "path": f.path,
                    "starting_time": {"nanoseconds_since_epoch": f.start_ns},
                    "duration": {"nanoseconds": f.end_ns - f.start_ns},
                    "message_count": f.count,
                }
                for f in files
            ],
            "custom_data": self.custom_data or None,
            "ros_distro": "rosbags",
        }

    def _write_metadata(self) -> None:
        tmp = self.path / "metadata.yaml.tmp"
        tmp.write_text(_yaml_dump({"rosbag2_bagfile_information": self._info(self.files)}))
        tmp.replace(self.path / "metadata.yaml")


def _yaml_dump(data) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)   # libyaml when present: metadata every split
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False)


# -- reading ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    log_ns: int
    raw: bytes | memoryview


class BagReader:
    """Reads a rosbag2 bag (directory with metadata.yaml, or a single .mcap / .db3 file).

    Every failure of the underlying reader (missing files, truncated storage) becomes a DataError
    naming the bag.
    """

    def __init__(self, path: str | Path):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: bag does not exist")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # rosbags raises several types (ReaderError, OSError, KeyError...)
            raise DataError(f"{self.path}: cannot open bag: missing, truncated or corrupt storage files or "
                            f"metadata.yaml ({type(exc).__name__}: {exc})") from exc
        self.topics: dict[str, str] = {c.topic: c.msgtype for c in self._reader.connections}
        metadata = getattr(getattr(self._reader, "storage", None), "metadata", None)
        self.custom_data: dict = dict(getattr(metadata, "custom", None) or {})

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:  # noqa: BLE001 - closing a broken bag must not hide the original error
            pass

    def require(self, topics: Iterable[str], why: str = "") -> None:
        missing = sorted(set(topics) - set(self.topics))
        if missing:
            raise DataError(
                f"{self.path}: bag has no topic {', '.join(missing)}{' (' + why + ')' if why else ''}; "
                f"it has {sorted(self.topics)}. Record those topics or pick the matching --profile."
            )

    def messages(self, topics: Iterable[str], start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[BagMessage]:
        wanted = set(topics)
        connections = [c for c in self._reader.connections if c.topic in wanted]
        try:
            for conn, log_ns, raw in self._reader.messages(connections=connections, start=start_ns,
                                                           stop=stop_ns):
                yield BagMessage(conn.topic, conn.msgtype, int(log_ns), raw)
        except DataError:
            raise
        except Exception as exc:  # a truncated or corrupt storage file surfaces here
            raise DataError(f"{self.path}: bag is truncated or corrupt ({type(exc).__name__}: {exc})") from exc


# -- the recording preset (ros2_ws/src/cosmos_aloha/config/record_topics.yaml) --------------------------
@dataclass(frozen=True)
class RecordPreset:
    topics: tuple[tuple[str, str], ...]      # (topic, ROS 2 type)
    episode_topic: str = "/cosmos/episode"
    split_seconds: float = 2.0

    @classmethod
    def load(cls, path: str | Path | None = None) -> "RecordPreset":
        path = Path(path) if path else default_record_preset_path()
        try:
            data = yaml.safe_load(path.read_text()) or {}
            topics = tuple((str(t["name"]), str(t["type"])) for t in data["topics"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read recording preset {path}: {exc}") from exc
        unknown = [f"{t} ({m})" for t, m in topics if m not in typestore().types]
        if unknown:
            raise ConfigError(f"recording preset {path}: unknown message types {unknown}")
        return cls(topics, str(data.get("episode_topic", "/cosmos/episode")),
                   float(data.get("split_seconds", 2.0)))

    def ros2_bag_command(self, out: str = "BAGDIR") -> str:
        """The equivalent `ros2 bag record` command line (MCAP storage) for real ROS 2 installs."""
        return f"ros2 bag record -s mcap -o {out} " + " ".join(t for t, _ in self.topics)


def default_record_preset_path() -> Path:
    """config/record_topics.yaml of the cosmos_aloha package: source tree first, then the colcon install."""
    import importlib.util

    spec = importlib.util.find_spec("cosmos_aloha")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent.parent / "config" / "record_topics.yaml"
        if candidate.exists():
            return candidate
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("cosmos_aloha")) / "config" / "record_topics.yaml"
        if candidate.exists():
            return candidate
    except Exception:  # noqa: BLE001 - ament index absent or package not installed: report below
        pass
    raise ConfigError("cannot find cosmos_aloha's config/record_topics.yaml; pass --preset PATH")
