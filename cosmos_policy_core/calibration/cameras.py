"""Camera intrinsics: board detection (chessboard or ChArUco), OpenCV calibration, ROS CameraInfo YAML.

The YAML is the camera_calibration_parsers format that ROS camera drivers read, so the `cameras`
node, rviz and any other ROS tool agree on one file per camera.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml
from tqdm import tqdm

from cosmos_policy_core.calibration.grippers import CalibrationError
from cosmos_policy_core.errors import ConfigError

log = logging.getLogger(__name__)


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the data extra installs it
        raise ConfigError("camera calibration needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


@dataclass(frozen=True)
class BoardSpec:
    """A calibration target. Chessboard: cols x rows *inner corners*; ChArUco: cols x rows *squares*."""

    kind: str = "chessboard"
    cols: int = 9
    rows: int = 6
    square_m: float = 0.025
    marker_m: float = 0.018  # ChArUco only
    dictionary: str = "DICT_5X5_100"  # ChArUco only

    def __post_init__(self):
        if self.kind not in ("chessboard", "charuco"):
            raise ConfigError(f"board kind must be 'chessboard' or 'charuco', got {self.kind!r}")
        if self.cols < 2 or self.rows < 2 or self.square_m <= 0:
            raise ConfigError(f"board needs cols, rows >= 2 and a positive square size, got {self}")
        if self.kind == "charuco" and not 0 < self.marker_m < self.square_m:
            raise ConfigError(f"ChArUco marker size {self.marker_m} must be positive and below the square size")

    def object_points(self) -> np.ndarray:
        """Chessboard inner corners on the board plane (z = 0), row-major as OpenCV returns them."""
        grid = np.mgrid[0 : self.cols, 0 : self.rows].T.reshape(-1, 2)
        pts = np.zeros((self.cols * self.rows, 3), dtype=np.float32)
        pts[:, :2] = grid * self.square_m
        return pts

    def charuco_board(self):
        cv2 = _cv2()
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.cols, self.rows), self.square_m, self.marker_m, dictionary)


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole + plumb_bob distortion, as in sensor_msgs/CameraInfo."""

    camera_name: str
    width: int
    height: int
    K: tuple[float, ...]  # 3x3 row-major
    D: tuple[float, ...]  # k1 k2 p1 p2 k3
    distortion_model: str = "plumb_bob"

    @property
    def fx(self) -> float:
        return self.K[0]

    @property
    def fy(self) -> float:
        return self.K[4]

    @property
    def cx(self) -> float:
        return self.K[2]

    @property
    def cy(self) -> float:
        return self.K[5]

    @property
    def R(self) -> tuple[float, ...]:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def P(self) -> tuple[float, ...]:
        """Projection of the unrectified monocular camera: [K | 0]."""
        k = self.K
        return (k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0)

    def matrix(self) -> np.ndarray:
        return np.asarray(self.K, dtype=np.float64).reshape(3, 3)

    @classmethod
    def nominal(cls, camera_name: str, width: int = 640, height: int = 480, hfov_deg: float = 70.0) -> "CameraIntrinsics":
        """Uncalibrated placeholder from a field of view (so CameraInfo is never empty)."""
        f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
        return cls(camera_name, width, height, (f, 0.0, width / 2, 0.0, f, height / 2, 0.0, 0.0, 1.0), (0.0,) * 5)

    def to_ros_dict(self) -> dict:
        def mat(rows, cols, data):
            return {"rows": rows, "cols": cols, "data": [float(v) for v in data]}

        return {
            "image_width": int(self.width),
            "image_height": int(self.height),
            "camera_name": self.camera_name,
            "camera_matrix": mat(3, 3, self.K),
            "distortion_model": self.distortion_model,
            "distortion_coefficients": mat(1, len(self.D), self.D),
            "rectification_matrix": mat(3, 3, self.R),
            "projection_matrix": mat(3, 4, self.P),
        }

    def to_yaml(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_ros_dict(), sort_keys=False, default_flow_style=None))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CameraIntrinsics":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
            K = tuple(float(v) for v in data["camera_matrix"]["data"])
            D = tuple(float(v) for v in data["distortion_coefficients"]["data"])
            intrinsics = cls(str(data.get("camera_name", path.stem)), int(data["image_width"]),
                             int(data["image_height"]), K, D, str(data.get("distortion_model", "plumb_bob")))
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is not a ROS CameraInfo YAML (camera_matrix, distortion_coefficients, "
                              f"image_width, image_height): {exc}") from exc
        if len(K) != 9:
            raise ConfigError(f"{path}: camera_matrix has {len(K)} values, needs 9")
        return intrinsics


@dataclass(frozen=True)
class CalibrationResult:
    intrinsics: CameraIntrinsics
    rms_px: float  # OpenCV's RMS reprojection error over all points
    per_view_px: tuple[float, ...]
    used: tuple[str, ...]
    rejected: tuple[str, ...]

    def report(self) -> dict:
        i = self.intrinsics
        return {
            "camera_name": i.camera_name, "image_size": [i.width, i.height],
            "fx": i.fx, "fy": i.fy, "cx": i.cx, "cy": i.cy, "distortion": list(i.D),
            "reprojection_rms_px": self.rms_px,
            "per_view_rms_px": dict(zip(self.used, self.per_view_px)),
            "views_used": len(self.used), "views_rejected": list(self.rejected),
        }

    def report_text(self) -> str:
        r = self.report()
        lines = [f"camera {r['camera_name']}  {r['image_size'][0]}x{r['image_size'][1]}",
                 f"fx {r['fx']:.2f}  fy {r['fy']:.2f}  cx {r['cx']:.2f}  cy {r['cy']:.2f}",
                 "distortion " + " ".join(f"{d:+.4f}" for d in r["distortion"]),
                 f"reprojection RMS {r['reprojection_rms_px']:.3f} px over {r['views_used']} views"]
        worst = sorted(r["per_view_rms_px"].items(), key=lambda kv: -kv[1])[:3]
        lines += [f"  worst view {name}: {err:.3f} px" for name, err in worst]
        if r["views_rejected"]:
            lines.append(f"board not found in {len(r['views_rejected'])} views: {', '.join(r['views_rejected'][:5])}")
        return "\n".join(lines)

    def save_report(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.report(), indent=2))


def _gray(image: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_chessboard(image: np.ndarray, board: BoardSpec) -> np.ndarray | None:
    """Sub-pixel inner corners (N, 1, 2) float32, or None when the whole board is not visible."""
    cv2 = _cv2()
    gray = _gray(image)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    found, corners = cv2.findChessboardCorners(gray, (board.cols, board.rows), flags)
    if not found:
        return None
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
    refined = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), criteria)
    return np.asarray(refined, dtype=np.float32).reshape(-1, 1, 2)


def detect_charuco(image: np.ndarray, board: BoardSpec, min_corners: int = 6):
    """(object points (N,3), image points (N,1,2)) of the detected ChArUco corners, or None."""
    cv2 = _cv2()
    detector = cv2.aruco.CharucoDetector(board.charuco_board())
    corners, ids, _, _ = detector.detectBoard(_gray(image))
    if ids is None or len(ids) < min_corners:
        return None
    obj, img = board.charuco_board().matchImagePoints(corners, ids)
    return obj.reshape(-1, 3).astype(np.float32), img.reshape(-1, 1, 2).astype(np.float32)


def calibrate_camera(views: Iterable[tuple[str, np.ndarray]], board: BoardSpec, camera_name: str,
                     min_views: int = 5) -> CalibrationResult:
    """Intrinsics from named images of the board. Views without a detected board are skipped."""
    cv2 = _cv2()
    object_points, image_points, used, rejected = [], [], [], []
    size = None
    for name, image in tqdm(list(views), desc=f"detect {camera_name}", unit="img", leave=False):
        this_size = (image.shape[1], image.shape[0])
        if size is None:
            size = this_size
        elif this_size != size:
            raise CalibrationError(f"{name} is {this_size[0]}x{this_size[1]}, the first image was "
                                   f"{size[0]}x{size[1]}; calibrate one resolution at a time")
        if board.kind == "chessboard":
            corners = detect_chessboard(image, board)
            detection = None if corners is None else (board.object_points(), corners)
        else:
            detection = detect_charuco(image, board)
        if detection is None:
            rejected.append(name)
            continue
        object_points.append(detection[0])
        image_points.append(detection[1])
        used.append(name)
    if len(used) < min_views:
        raise CalibrationError(f"{camera_name}: the board was found in {len(used)} of {len(used) + len(rejected)} "
                               f"images, need at least {min_views}; check --board/--cols/--rows (inner corners for "
                               "a chessboard) and capture the board at more angles")
    rms, K, D, rvecs, tvecs = cv2.calibrateCamera(object_points, image_points, size, None, None)
    per_view = []
    for obj, img, rvec, tvec in zip(object_points, image_points, rvecs, tvecs):
        projected, _ = cv2.projectPoints(obj, rvec, tvec, K, D)
        residual = projected.reshape(-1, 2) - np.asarray(img).reshape(-1, 2)
        per_view.append(float(np.sqrt(np.mean(np.sum(residual**2, axis=-1)))))
    D = np.asarray(D, dtype=np.float64).ravel()[:5]
    intrinsics = CameraIntrinsics(camera_name, size[0], size[1], tuple(float(v) for v in K.ravel()),
                                  tuple(float(v) for v in D))
    log.info("%s: RMS reprojection error %.3f px over %d views", camera_name, rms, len(used))
    return CalibrationResult(intrinsics, float(rms), tuple(per_view), tuple(used), tuple(rejected))


def load_images(paths: Sequence[str | Path]) -> list[tuple[str, np.ndarray]]:
    """Image files (or directories of them) -> (name, BGR image) in sorted order."""
    cv2 = _cv2()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        else:
            files.append(p)
    if not files:
        raise CalibrationError(f"no calibration images found in {[str(p) for p in paths]}")
    views = []
    for f in files:
        image = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibrationError(f"cannot read image {f}")
        views.append((f.name, image))
    return views

