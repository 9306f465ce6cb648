"""Camera capture for the real robot: OpenCV/V4L2 sources, a synthetic test-pattern source, and a
per-camera grab thread that stamps every frame when it leaves the driver.

The `cameras` ROS node only publishes what a `CameraGrabber` holds; everything here runs without ROS.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.robot.backend import HardwareError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraConfig:
    """One camera. `device` is a path (/dev/CAM_HIGH, a udev symlink) or an index ("0")."""

    name: str
    device: str
    width: int = 640
    height: int = 480
    fps: float = 30.0
    fourcc: str = "MJPG"  # MJPG keeps 3 USB cameras at 640x480@30 within USB 2 bandwidth; "" = driver default
    exposure: float = -1.0  # -1 = auto exposure; otherwise the V4L2 exposure_absolute value (100 µs units)

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ConfigError(f"camera {self.name}: width, height and fps must be positive, got {self}")
        if self.fourcc and len(self.fourcc) != 4:
            raise ConfigError(f"camera {self.name}: fourcc must be 4 characters (e.g. MJPG, YUYV), got {self.fourcc!r}")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # H x W x 3 uint8, RGB
    stamp_ns: int      # wall clock (time.time_ns, the ROS system clock) when the driver handed it over
    index: int         # frames captured so far by this grabber


class FrameSource(Protocol):
    def open(self) -> None: ...

    def read(self) -> np.ndarray | None:
        """Block until the next frame; H x W x 3 uint8 RGB, or None on a read failure."""

    def close(self) -> None: ...


SourceFactory = Callable[[CameraConfig], FrameSource]


class OpenCVSource:
    """cv2.VideoCapture on V4L2 with the format, size, rate and exposure of the config."""

    def __init__(self, config: CameraConfig):
        self.config = config
        self._cap = None

    def open(self) -> None:
        import cv2

        c = self.config
        device = int(c.device) if c.device.isdigit() else c.device
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise HardwareError(f"camera {c.name}: cannot open {c.device} (check the udev symlink and that no "
                                "other process holds the camera)")
        if c.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
        cap.set(cv2.CAP_PROP_FPS, c.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of old ones
        # V4L2 auto-exposure menu: 1 = manual, 3 = aperture priority (auto).
        if c.exposure >= 0:
            cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)
            cap.set(cv2.CAP_PROP_EXPOSURE, c.exposure)
        else:
            cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 3)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if (w, h) != (c.width, c.height):
            cap.release()
            raise HardwareError(f"camera {c.name}: {c.device} delivers {w}x{h}, {c.width}x{c.height} was requested; "
                                "list its modes with `v4l2-ctl -d DEVICE --list-formats-ext`")
        self._cap = cap
        log.info("camera %s on %s: %dx%d @ %.0f fps (%s)", c.name, c.device, w, h, cap.get(cv2.CAP_PROP_FPS),
                 c.fourcc or "default format")

    def read(self) -> np.ndarray | None:
        import cv2

        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SyntheticSource:
    """A moving test pattern at the configured size and frame rate (bring-up and tests, no camera)."""

    def __init__(self, config: CameraConfig):
        self.config = config
        self._next = 0.0
        self._count = 0
        rows = np.arange(config.height, dtype=np.uint16)[:, None]
        cols = np.arange(config.width, dtype=np.uint16)[None, :]
        self._base = np.zeros((config.height, config.width, 3), dtype=np.uint8)
        self._base[..., 1] = (cols % 256).astype(np.uint8)
        self._base[..., 2] = (rows % 256).astype(np.uint8)

    def open(self) -> None:
        self._next = time.monotonic()

    def read(self) -> np.ndarray | None:
        # Pace like a device: a frame every 1/fps, never faster.
        self._next += 1.0 / self.config.fps
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.monotonic()
        image = self._base.copy()
        image[..., 0] = self._count % 256  # frame counter in the red channel
        self._count += 1
        return image

    def close(self) -> None:
        pass


SOURCES: dict[str, SourceFactory] = {"opencv": OpenCVSource, "synthetic": SyntheticSource}


def make_source(kind: str, config: CameraConfig) -> FrameSource:
    if kind not in SOURCES:
        raise ConfigError(f"unknown camera source {kind!r}; known: {sorted(SOURCES)}")
    return SOURCES[kind](config)


class CameraGrabber:
    """Keeps the newest frame of one source, read by its own thread (cv2 releases the GIL in read)."""

    def __init__(self, source: FrameSource, name: str, clock_ns: Callable[[], int] = time.time_ns):
        self.source = source
        self.name = name
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._count = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.source.open()
        self._thread = threading.Thread(target=self._run, name=f"grab_{self.name}", daemon=True)
        self._thread.start()

    def grab_once(self) -> Frame | None:
        """One blocking read (for capture in the caller's thread instead of the grab thread)."""
        image = self.source.read()
        stamp = self._clock_ns()
        if image is None:
            self.failures += 1
            return None
        with self._lock:
            self._count += 1
            self._frame = Frame(image, stamp, self._count)
            return self._frame

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.grab_once() is None:
                if self.failures % 25 == 1:
                    log.warning("camera %s: read failed (%d so far)", self.name, self.failures)
                time.sleep(0.01)

    def latest(self) -> Frame | None:
        with self._lock:
            return self._frame

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self.source.close()
