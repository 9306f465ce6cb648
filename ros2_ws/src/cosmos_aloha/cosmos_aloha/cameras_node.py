"""`cameras` node: three OpenCV/V4L2 cameras -> /<cam>/image_raw (rgb8) + /<cam>/camera_info at 25 Hz.

Frames are stamped when the driver hands them over (grab thread per camera, or capture in the timer);
CameraInfo comes from calibration/cameras/<cam>.yaml (ROS CameraInfo YAML).
"""
from __future__ import annotations

from pathlib import Path

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from cosmos_aloha.conversions import image_to_msg, ns_to_stamp
from cosmos_aloha.node_runtime import declare_parameters, run_node
from cosmos_aloha.qos import SENSOR_QOS
from cosmos_policy_core.calibration.cameras import CameraIntrinsics
from cosmos_policy_core.calibration.files import resolve_calibration_path
from cosmos_policy_core.robot.camera_capture import CameraConfig, CameraGrabber, SourceFactory, make_source

DEFAULTS = {
    "cameras": ["cam_high", "cam_left_wrist", "cam_right_wrist"],
    "devices": ["/dev/CAM_HIGH", "/dev/CAM_LEFT_WRIST", "/dev/CAM_RIGHT_WRIST"],
    "width": 640,
    "height": 480,
    "capture_fps": 30.0,        # the camera's own rate; publishing picks the newest frame each tick
    "fourcc": "MJPG",           # "" = driver default (often YUYV, which limits 3 cameras on one USB 2 bus)
    "exposure": -1.0,           # -1 auto, else V4L2 exposure_absolute (100 µs units), same for all cameras
    "publish_hz": 25.0,
    "source": "opencv",         # opencv | synthetic (test pattern, no hardware)
    "threaded": True,           # grab thread per camera (true) or a blocking read in the timer (false)
    "calibration_dir": "calibration/cameras",
}


def camera_info_msg(intrinsics: CameraIntrinsics, stamp_ns: int, frame_id: str) -> CameraInfo:
    info = CameraInfo()
    info.header.stamp = ns_to_stamp(stamp_ns)
    info.header.frame_id = frame_id
    info.width, info.height = intrinsics.width, intrinsics.height
    info.distortion_model = intrinsics.distortion_model
    info.d = list(intrinsics.D)
    info.k = list(intrinsics.K)
    info.r = list(intrinsics.R)
    info.p = list(intrinsics.P)
    return info


class CamerasNode(Node):
    def __init__(self, source_factory: SourceFactory | None = None):
        super().__init__("cameras")
        p = declare_parameters(self, DEFAULTS)
        self.params = p
        if len(p.devices) != len(p.cameras):
            raise ValueError(f"{len(p.cameras)} cameras but {len(p.devices)} devices; give one device per camera")
        make = source_factory or (lambda config: make_source(p.source, config))
        self._grabbers: dict[str, CameraGrabber] = {}
        self._intrinsics: dict[str, CameraIntrinsics] = {}
        self._image_pubs, self._info_pubs = {}, {}
        self._last_index: dict[str, int] = {}
        self._stale_ticks: dict[str, int] = {}
        for cam, device in zip(p.cameras, p.devices):
            config = CameraConfig(cam, str(device), int(p.width), int(p.height), float(p.capture_fps),
                                  str(p.fourcc), float(p.exposure))
            self._intrinsics[cam] = self._load_intrinsics(cam, p)
            grabber = CameraGrabber(make(config), cam, clock_ns=lambda: self.get_clock().now().nanoseconds)
            if p.threaded:
                grabber.start()
            else:
                grabber.source.open()
            self._grabbers[cam] = grabber
            self._image_pubs[cam] = self.create_publisher(Image, f"/{cam}/image_raw", SENSOR_QOS)
            self._info_pubs[cam] = self.create_publisher(CameraInfo, f"/{cam}/camera_info", SENSOR_QOS)
            self._last_index[cam] = 0
            self._stale_ticks[cam] = 0
        self.create_timer(1.0 / float(p.publish_hz), self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"cameras {list(p.cameras)} ({p.source}, {p.width}x{p.height}, {p.fourcc or 'default'})"
                               f" published at {p.publish_hz:g} Hz")

    def _load_intrinsics(self, cam: str, p) -> CameraIntrinsics:
        path = resolve_calibration_path(Path(p.calibration_dir) / f"{cam}.yaml")
        if path.exists():
            intrinsics = CameraIntrinsics.from_yaml(path)
            if (intrinsics.width, intrinsics.height) != (p.width, p.height):
                self.get_logger().warning(f"{path} was calibrated at {intrinsics.width}x{intrinsics.height}, the camera "
                                          f"runs at {p.width}x{p.height}: CameraInfo will be wrong; recalibrate")
            return intrinsics
        self.get_logger().warning(f"no calibration {path}; publishing nominal intrinsics for {cam} "
                                  "(run `cosmos-aloha calibrate cameras`)")
        return CameraIntrinsics.nominal(cam, int(p.width), int(p.height))

    def _tick(self) -> None:
        for cam, grabber in self._grabbers.items():
            frame = grabber.latest() if self.params.threaded else grabber.grab_once()
            if frame is None or frame.index == self._last_index[cam]:
                # No new frame since the last tick: publish nothing rather than a duplicate.
                self._stale_ticks[cam] += 1
                if self._stale_ticks[cam] in (25, 250):
                    self.get_logger().warning(f"{cam}: no new frame for {self._stale_ticks[cam]} ticks")
                continue
            self._stale_ticks[cam] = 0
            self._last_index[cam] = frame.index
            frame_id = f"{cam}_optical_frame"
            self._image_pubs[cam].publish(image_to_msg(frame.image, frame.stamp_ns, frame_id))
            self._info_pubs[cam].publish(camera_info_msg(self._intrinsics[cam], frame.stamp_ns, frame_id))

    def close(self) -> None:
        for grabber in self._grabbers.values():
            grabber.stop()


def main(argv: list[str] | None = None) -> int:
    return run_node(CamerasNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
