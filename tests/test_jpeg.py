"""JPEG for camera frames (cosmos_policy_core.runtime.jpeg) and `sim eval --jpeg-quality`."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.runtime.jpeg import (
    DEFAULT_JPEG_QUALITY,
    JpegDecodeError,
    check_quality,
    decode_jpeg,
    encode_jpeg,
    jpeg_round_trip,
)

pytest.importorskip("cv2")


def scene(h: int = 480, w: int = 640) -> np.ndarray:
    """A smooth table-like gradient with a saturated red cube and a blue bar: colour order shows."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([(x * 200 // w) + 30, (y * 180 // h) + 40, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    image[200:260, 300:360] = (220, 20, 20)
    image[50:70, :] = (20, 20, 220)
    return image


def test_round_trip_keeps_shape_colour_order_and_detail():
    image = scene()
    data = encode_jpeg(image)
    assert data.dtype == np.uint8 and data.ndim == 1 and bytes(data[:2]) == b"\xff\xd8"
    assert data.size < image.nbytes / 20       # what makes it worth sending across a network
    out = decode_jpeg(data.tobytes())
    assert out.shape == image.shape and out.dtype == np.uint8
    cube = out[210:250, 310:350].reshape(-1, 3).mean(axis=0)
    assert cube[0] > 200 and cube[1] < 40 and cube[2] < 40   # red stays red: RGB in, RGB out
    assert np.abs(out.astype(int) - image).mean() < 1.0
    assert np.array_equal(jpeg_round_trip(image, DEFAULT_JPEG_QUALITY), out)


def test_decode_reads_every_buffer_type_and_lower_quality_is_smaller():
    import array

    image = scene(120, 160)
    data = encode_jpeg(image, 95)
    for buffer in (data, data.tobytes(), array.array("B", data.tobytes()), memoryview(data.tobytes())):
        assert decode_jpeg(buffer).shape == (120, 160, 3)
    assert encode_jpeg(image, 30).size < encode_jpeg(image, 95).size


def test_bad_input_names_the_problem():
    with pytest.raises(JpegDecodeError, match="not a decodable JPEG"):
        decode_jpeg(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(JpegDecodeError, match="empty"):
        decode_jpeg(b"")
    with pytest.raises(ValueError):                     # JpegDecodeError is a ValueError for message handlers
        decode_jpeg(b"garbage")
    with pytest.raises(ShapeError, match="HxWx3 uint8"):
        encode_jpeg(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ShapeError):
        encode_jpeg(np.zeros((4, 4), np.uint8))
    for bad in (0, 101, 90.5, True, "90"):
        with pytest.raises(ConfigError, match="1..100"):
            check_quality(bad)
    assert check_quality(100) == 100


class _ImageEnv:
    """Two control steps of a scene with one camera; success never."""

    def __init__(self):
        self.image = scene(96, 128)

    def reset(self, seed):
        self.i, self.max_reward, self.success = 0, 0, False
        return {"qpos": np.zeros(14), "images": {"cam_high": self.image}}

    def step(self, command):
        self.i += 1
        return {"qpos": np.zeros(14), "images": {"cam_high": self.image}}, 0


class _ImageRecordingPolicy:
    def __init__(self):
        self.seen = []

    def act(self, observation, seed, num_steps=None, return_future_images=False):
        self.seen.append(observation.images["cam_high"])
        return SimpleNamespace(actions=np.zeros((50, 14)), value=0.0, future_images=None)


def test_sim_eval_jpeg_quality_gives_the_policy_round_tripped_frames():
    from cosmos_policy_core.runtime.execution import ExecutorConfig
    from cosmos_policy_core.runtime.rollout import EvalConfig, run_episode

    env, executor = _ImageEnv(), ExecutorConfig.aloha(25)
    for quality, expected in ((None, env.image), (40, jpeg_round_trip(env.image, 40))):
        policy = _ImageRecordingPolicy()
        run_episode(policy, env, executor, EvalConfig(episodes=1, max_steps=2, execute_steps=1,
                                                      jpeg_quality=quality), 0)
        assert len(policy.seen) == 2
        assert all(np.array_equal(seen, expected) for seen in policy.seen)
    assert not np.array_equal(jpeg_round_trip(env.image, 40), env.image)   # the two cases differ
    with pytest.raises(ConfigError, match="jpeg quality"):
        EvalConfig(jpeg_quality=0)


def test_sim_eval_cli_passes_jpeg_quality(monkeypatch, capsys):
    from cosmos_policy_core.cli import main
    from cosmos_policy_core.runtime import rollout

    seen = {}

    def fake_evaluate(checkpoint, cfg, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(rollout, "evaluate_checkpoint", fake_evaluate)
    with pytest.raises(SystemExit):
        main(["sim", "eval", "--checkpoint", "x", "--episodes", "3", "--jpeg-quality", "85"])
    assert seen["cfg"].jpeg_quality == 85
