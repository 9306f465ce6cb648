"""Camera streams as MP4 files through PyAV: many episodes appended to one file, frames read back by timestamp.

Frame k of a file is shown at k / fps (time base 1/fps), so an episode that starts at frame s spans
[s / fps, (s + length) / fps): the timestamps LeRobot's datasets store and query.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from cosmos_policy_core.errors import ConfigError, DataError
from cosmos_policy_core.realtime import realtime_denied

# Encoder names by the codec name LeRobot records in info.json (`video.codec`).
ENCODERS = {"h264": "libx264", "av1": "libsvtav1"}
# Default quality per codec: lower is larger files, closer to the original pixels. 30 is LeRobot's for AV1.
DEFAULT_CRF = {"h264": 18, "av1": 30}
PIXEL_FORMATS = {"h264": ("yuv420p", "yuv444p"), "av1": ("yuv420p",)}


@dataclass(frozen=True)
class VideoSettings:
    """How camera frames are encoded. LeRobot's recorder uses AV1, crf 30, a key frame every 2 frames
    (cheap random access while training); H.264 decodes everywhere and encodes faster on a CPU."""

    codec: str = "h264"        # h264 | av1
    crf: int | None = None     # None: DEFAULT_CRF of the codec
    gop: int = 2               # frames between key frames
    pix_fmt: str = "yuv420p"   # yuv444p (h264 only) keeps full-resolution colour: small images lose less

    @property
    def encoder(self) -> str:
        if self.codec not in ENCODERS:
            raise ConfigError(f"video codec {self.codec!r} is not supported; choose one of {sorted(ENCODERS)}")
        if self.pix_fmt not in PIXEL_FORMATS[self.codec]:
            raise ConfigError(f"pixel format {self.pix_fmt!r} is not available with {self.codec}; choose one of "
                              f"{list(PIXEL_FORMATS[self.codec])}")
        return ENCODERS[self.codec]

    def options(self) -> dict[str, str]:
        crf = DEFAULT_CRF[self.codec] if self.crf is None else self.crf
        options = {"g": str(self.gop), "crf": str(crf)}
        if self.codec == "av1":
            options["preset"] = "10"   # LeRobot's libsvtav1 default: fast enough for CPU encoding
        return options


class VideoFileWriter:
    """One MP4 file of one camera; `append` adds an episode's frames and returns its time span."""

    def __init__(self, path: str | Path, fps: int, settings: VideoSettings = VideoSettings()):
        import av

        self.path = Path(path)
        self.fps = int(fps)
        self.settings = settings
        if settings.encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")    # the AV1 encoder prints its configuration unless told not to
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._av = av
        self._container = av.open(str(self.path), "w")
        self._stream = None

    def _open_stream(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise DataError(f"{self.path}: frames are {width}x{height}; {self.settings.pix_fmt} video needs even "
                            "width and height")
        with realtime_denied():
            stream = self._container.add_stream(self.settings.encoder, rate=self.fps, options=self.settings.options())
        stream.width, stream.height = width, height
        stream.pix_fmt = self.settings.pix_fmt
        stream.time_base = Fraction(1, self.fps)
        stream.thread_count = 1        # deterministic output, and the machine's other work keeps its cores
        self._stream = stream

    def append(self, frames_T_H_W_3: np.ndarray) -> tuple[float, float]:
        """Encode frames (T, H, W, 3) uint8 RGB; returns (from_timestamp, to_timestamp) in seconds."""
        frames = np.asarray(frames_T_H_W_3)
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise DataError(f"{self.path}: expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        if self._stream is None:
            self._open_stream(*frames.shape[1:3])
        elif (self._stream.height, self._stream.width) != frames.shape[1:3]:
            raise DataError(f"{self.path}: frames change size from {self._stream.width}x{self._stream.height} "
                            f"to {frames.shape[2]}x{frames.shape[1]} within one camera")
        start = self.frames
        with realtime_denied():     # libsvtav1 would otherwise run this process under SCHED_FIFO 99
            for image in frames:
                frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = self.frames
                frame.time_base = Fraction(1, self.fps)
                self._container.mux(self._stream.encode(frame))
                self.frames += 1
        return start / self.fps, self.frames / self.fps

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1024**2 if self.path.exists() else 0.0

    def close(self) -> None:
        with realtime_denied():
            if self._stream is not None:
                self._container.mux(self._stream.encode(None))
            self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe(path: str | Path) -> dict:
    """LeRobot's `info` block of a video feature, read from the file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": int(stream.height),
            "video.width": int(stream.width),
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate or stream.average_rate),
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }


def read_frames(path: str | Path, timestamps_s: np.ndarray, tolerance_s: float,
                label: str) -> tuple[np.ndarray, float]:
    """The frames shown at `timestamps_s` (seconds, ascending) as (N, H, W, 3) uint8 RGB, and the largest
    difference in seconds between a requested time and its frame's presentation time.

    Each timestamp takes the frame whose presentation time is within `tolerance_s` of it; a timestamp
    with no such frame (a truncated file, an episode that is not where the metadata says) is a DataError
    naming `label`. Only the span from the key frame before the first timestamp to the last one is decoded.
    """
    import av

    wanted = np.asarray(timestamps_s, dtype=np.float64)
    if wanted.size == 0:
        raise DataError(f"{label}: no frames requested from {path}")
    out: np.ndarray | None = None
    found = np.zeros(wanted.size, dtype=bool)
    offset = 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{label}: {path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start = max(0.0, float(wanted[0]) - tolerance_s)
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if t > wanted[-1] + tolerance_s:
                    break
                lo, hi = np.searchsorted(wanted, [t - tolerance_s, t + tolerance_s], side="left")
                hits = np.arange(lo, hi)
                hits = hits[np.abs(wanted[hits] - t) <= tolerance_s]
                if hits.size == 0:
                    continue
                image = frame.to_ndarray(format="rgb24")
                if out is None:
                    out = np.empty((wanted.size, *image.shape), dtype=np.uint8)
                out[hits] = image
                found[hits] = True
                offset = max(offset, float(np.abs(wanted[hits] - t).max()))
    except av.error.FFmpegError as exc:
        raise DataError(f"{label}: {path} cannot be decoded ({exc}); the file is truncated or corrupt") from exc
    if not found.all():
        missing = wanted[~found]
        raise DataError(f"{label}: {path} has no frame within {tolerance_s * 1e3:.0f} ms of "
                        f"{missing.size} requested time(s), first t={missing[0]:.3f} s; the video is truncated "
                        "or its episode timestamps do not match the metadata")
    return out, offset
