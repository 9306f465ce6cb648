"""`cameras` lifecycle node: three OpenCV/V4L2 cameras -> <cam>/image_raw (rgb8, and JPEG on
<cam>/image_raw/compressed while subscribed) + <cam>/camera_info at 25 Hz.

Configure opens the devices (a grab thread per camera, or capture in the timer); active, it publishes; cleanup
closes them. Frames are stamped when the driver hands them over; CameraInfo comes from
calibration/cameras/<cam>.yaml (ROS CameraInfo YAML).
"""
from __future__ import annotations

from pathlib import Path

from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo

from cosmos_aloha import topics
from cosmos_aloha.conversions import ns_to_stamp
from cosmos_aloha.image_transport import PUBLISHER_PARAMETERS, ImagePublisher
from cosmos_aloha.managed_node import ManagedNode
from cosmos_aloha.node_runtime import run_node
from cosmos_aloha.parameters import Param
from cosmos_aloha.qos import profile
from cosmos_policy_core.calibration.cameras import CameraIntrinsics
from cosmos_policy_core.calibration.files import resolve_calibration_path
from cosmos_policy_core.robot import aloha
from cosmos_policy_core.robot.camera_capture import CameraConfig, CameraGrabber, SourceFactory, make_source

PARAMETERS = (
    Param("cameras", list(aloha.CAMERAS), "published camera names"),
    Param("devices", ["/dev/CAM_HIGH", "/dev/CAM_LEFT_WRIST", "/dev/CAM_RIGHT_WRIST"],
          "V4L2 device per camera (udev rules in calibration/udev)"),
    Param("width", 640, "capture width"),
    Param("height", 480, "capture height"),
    Param("capture_fps", 30.0, "the camera's own rate; publishing picks the newest frame each tick"),
    Param("fourcc", "MJPG", "pixel format; \"\" keeps the driver default (often YUYV, which limits three cameras "
                            "on one USB 2 bus)"),
    Param("exposure", -1.0, "-1 auto, else V4L2 exposure_absolute (100 us units), the same for all cameras"),
    Param("publish_hz", aloha.CONTROL_HZ, "publish rate"),
    Param("source", "opencv", "opencv or synthetic (a test pattern, no hardware)"),
    Param("threaded", True, "one grab thread per camera (true) or a blocking read in the timer (false)"),
    Param("calibration_dir", "calibration/cameras", "camera intrinsics YAMLs"),
    *PUBLISHER_PARAMETERS,
)


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


class CamerasNode(ManagedNode):
    def __init__(self, source_factory: SourceFactory | None = None):
        super().__init__("cameras", PARAMETERS)
        p = self.p
        if len(p.devices) != len(p.cameras):
            raise ValueError(f"{len(p.cameras)} cameras but {len(p.devices)} devices; give one device per camera")
        self._make_source = source_factory or (lambda config: make_source(p.source, config))
        self._grabbers: dict[str, CameraGrabber] = {}
        self._intrinsics: dict[str, CameraIntrinsics] = {}
        self._image_pubs, self._info_pubs = {}, {}
        self._last_index: dict[str, int] = {}
        self._stale_ticks: dict[str, int] = {}
        self.create_timer(1.0 / float(p.publish_hz), self._tick, clock=self.steady_clock)

    # -- lifecycle --------------------------------------------------------------------------------------
    def on_configure(self, state):
        p = self.p
        try:
            for cam, device in zip(p.cameras, p.devices):
                config = CameraConfig(cam, str(device), int(p.width), int(p.height), float(p.capture_fps),
                                      str(p.fourcc), float(p.exposure))
                self._intrinsics[cam] = self._load_intrinsics(cam, p)
                grabber = CameraGrabber(self._make_source(config), cam,
                                        clock_ns=lambda: self.get_clock().now().nanoseconds)
                self._grabbers[cam] = grabber   # before opening: a failure below closes what did open
                if p.threaded:
                    grabber.start()
                else:
                    grabber.source.open()
                self._image_pubs[cam] = ImagePublisher(self.create_lifecycle_publisher, topics.image(cam).name,
                                                       profile(topics.image(cam)), int(p.jpeg_quality),
                                                       bool(p.compressed))
                self._info_pubs[cam] = self.create_lifecycle_publisher(CameraInfo, topics.camera_info(cam).name,
                                                                       profile(topics.camera_info(cam)))
                self._last_index[cam] = 0
                self._stale_ticks[cam] = 0
        except Exception as exc:   # a missing or busy device: say which, leave nothing open
            self.get_logger().error(f"configure failed: {exc}")
            self.release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"cameras {list(p.cameras)} ({p.source}, {p.width}x{p.height}, {p.fourcc or 'default'})"
                               f" published at {float(p.publish_hz):g} Hz while active")
        return super().on_configure(state)

    def release(self) -> None:
        for grabber in self._grabbers.values():
            grabber.stop()
        for pub in (*(pub for image in self._image_pubs.values() for pub in image.publishers),
                    *self._info_pubs.values()):
            self.destroy_lifecycle_publisher(pub)
        self._grabbers, self._image_pubs, self._info_pubs = {}, {}, {}

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
        if not self.active:
            return
        for cam, grabber in self._grabbers.items():
            frame = grabber.latest() if self.p.threaded else grabber.grab_once()
            if frame is None or frame.index == self._last_index[cam]:
                # No new frame since the last tick: publish nothing rather than a duplicate.
                self._stale_ticks[cam] += 1
                if self._stale_ticks[cam] in (25, 250):
                    self.get_logger().warning(f"{cam}: no new frame for {self._stale_ticks[cam]} ticks")
                continue
            self._stale_ticks[cam] = 0
            self._last_index[cam] = frame.index
            frame_id = f"{cam}_optical_frame"
            self._image_pubs[cam].publish(frame.image, frame.stamp_ns, frame_id)
            self._info_pubs[cam].publish(camera_info_msg(self._intrinsics[cam], frame.stamp_ns, frame_id))

    def close(self) -> None:
        for grabber in self._grabbers.values():
            grabber.stop()
        self._grabbers = {}


def main(argv: list[str] | None = None) -> int:
    return run_node(CamerasNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
