"""Latent layout codec: frame order, pixel clip, injection/extraction, normalization, role masks."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.layout import (
    LatentLayout,
    build_pixel_clip,
    clip_to_vae_input,
    condition_mask,
    conditioning_frames,
    extract_action_chunk,
    extract_proprio,
    extract_value,
    generated_frames,
    inject_action_chunk,
    inject_proprio,
    inject_value,
    loss_frame_mask,
    noised_frames,
    normalize,
    restore_frames,
    unnormalize,
)

ALOHA = LatentLayout.aloha()


def test_aloha_layout_matches_reference_table():
    assert ALOHA.slots == (
        "blank", "proprio", "left_wrist", "right_wrist", "top", "action", "future_proprio",
        "future_left_wrist", "future_right_wrist", "future_top", "value",
    )
    assert ALOHA.num_latent_frames == 11 and ALOHA.num_pixel_frames == 41
    assert ALOHA.latent_shape == (16, 11, 28, 28) and ALOHA.latent_frame_numel == 12544
    assert (ALOHA.chunk_size, ALOHA.action_dim, ALOHA.proprio_dim) == (50, 14, 14)
    # Future images are decoded from pixel frames 25 / 29 / 33 (reference §2.4).
    assert [ALOHA.pixel_frame(ALOHA.index(f"future_{c}")) for c in ALOHA.cameras] == [25, 29, 33]
    assert ALOHA.index("value") == 10 and ALOHA.index("action") == 5


def test_libero_and_robocasa_presets():
    libero, robocasa = LatentLayout.libero(), LatentLayout.robocasa()
    assert libero.num_latent_frames == 9 and libero.num_pixel_frames == 33
    assert libero.slots == ("blank", "proprio", "wrist", "primary", "action", "future_proprio",
                            "future_wrist", "future_primary", "value")
    assert (libero.chunk_size, libero.action_dim, libero.proprio_dim) == (16, 7, 9)
    assert robocasa.num_latent_frames == 11 and robocasa.num_pixel_frames == 41
    assert (robocasa.chunk_size, robocasa.execute_steps, robocasa.action_dim) == (32, 16, 7)
    assert robocasa.slots[2:5] == ("wrist", "primary", "secondary")


def test_layout_dict_round_trip_and_validation():
    assert LatentLayout.from_dict(ALOHA.to_dict()) == ALOHA
    assert LatentLayout.preset("libero") == LatentLayout.libero()
    with pytest.raises(ConfigError, match="unknown keys"):
        LatentLayout.from_dict({**ALOHA.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="latent frame holds"):
        LatentLayout(name="x", cameras=("a",), camera_sources=("a",), chunk_size=1000, action_dim=14,
                     proprio_dim=14, execute_steps=10)
    with pytest.raises(ConfigError, match="no slot"):
        ALOHA.index("nope")


@pytest.mark.parametrize("key, value, message", [
    ("image_size", "big", "image_size must be a positive integer, got 'big'"),
    ("image_size", 64.0, "image_size must be a positive integer, got 64.0"),
    ("image_size", True, "image_size must be a positive integer"),
    ("chunk_size", 0, "chunk_size must be a positive integer, got 0"),
    ("cameras", "top", "cameras must be a list of names, got 'top'"),
    ("camera_sources", ["cam_high", "", "cam_left_wrist"], "camera_sources must be a non-empty list of names"),
])
def test_a_layout_config_with_a_wrong_type_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        LatentLayout.from_dict({**ALOHA.to_dict(), key: value})


def _images(B=None, seed=0):
    g = np.random.default_rng(seed)
    shape = (224, 224, 3) if B is None else (B, 224, 224, 3)
    return {c: g.integers(0, 256, shape, dtype=np.uint8) for c in ALOHA.camera_sources}


def test_pixel_clip_inference_uses_current_images_as_future_placeholders():
    cur = _images()
    clip = build_pixel_clip(ALOHA, cur)
    assert clip.shape == (1, 41, 224, 224, 3) and clip.dtype == torch.uint8
    black = torch.zeros(224, 224, 3, dtype=torch.uint8)
    for t in [0, 1, 2, 3, 4, 17, 18, 19, 20, 21, 22, 23, 24, 37, 38, 39, 40]:
        assert torch.equal(clip[0, t], black), t
    expect = {"cam_left_wrist": [5, 25], "cam_right_wrist": [9, 29], "cam_high": [13, 33]}
    for cam, starts in expect.items():
        for s in starts:
            for t in range(s, s + 4):
                assert torch.equal(clip[0, t], torch.from_numpy(cur[cam])), (cam, t)


def test_pixel_clip_training_future_and_vae_input_range():
    cur, fut = _images(B=2, seed=1), _images(B=2, seed=2)
    clip = build_pixel_clip(ALOHA, cur, fut)
    assert clip.shape[0] == 2
    assert torch.equal(clip[1, 33], torch.from_numpy(fut["cam_high"][1]))
    assert torch.equal(clip[1, 13], torch.from_numpy(cur["cam_high"][1]))
    video = clip_to_vae_input(clip)
    assert video.shape == (2, 3, 41, 224, 224)
    assert video.min() >= -1 and video.max() <= 1 and video[0, :, 0].eq(-1).all()
    with pytest.raises(ShapeError, match="lack camera"):
        build_pixel_clip(ALOHA, {"cam_high": cur["cam_high"]})
    with pytest.raises(ShapeError, match="expected \\(224, 224, 3\\)"):
        build_pixel_clip(ALOHA, {c: np.zeros((100, 100, 3), np.uint8) for c in ALOHA.cameras})


def test_action_tiling_is_17_full_copies_plus_644_values():
    B = 2
    actions = torch.randn(B, 50, 14)
    latent = torch.randn(B, *ALOHA.latent_shape)
    out = inject_action_chunk(latent, actions, ALOHA.index("action"))
    flat = out[:, :, 5].reshape(B, -1)  # C-order: index c*784 + h*28 + w
    row = actions.reshape(B, 700)
    for k in range(17):
        assert torch.equal(flat[:, k * 700:(k + 1) * 700], row)
    assert 12544 - 17 * 700 == 644
    assert torch.equal(flat[:, 17 * 700:], row[:, :644])
    # Element (c, h, w) = flat[c*784 + h*28 + w]; a0[0..13] starts at channel 0, row 0.
    assert out[0, 1, 5, 0, 0] == row[0, 784 % 700]
    # Other frames untouched, input not mutated.
    assert torch.equal(out[:, :, :5], latent[:, :, :5]) and torch.equal(out[:, :, 6:], latent[:, :, 6:])
    assert not torch.equal(latent[:, :, 5], out[:, :, 5])


def test_proprio_tiling_is_exactly_896_copies():
    proprio = torch.randn(3, 14)
    out = inject_proprio(torch.zeros(3, *ALOHA.latent_shape), proprio, ALOHA.index("proprio"))
    flat = out[:, :, 1].reshape(3, -1)
    assert 12544 == 896 * 14
    assert torch.equal(flat.reshape(3, 896, 14), proprio[:, None, :].expand(3, 896, 14))


def test_per_sample_frame_indices():
    latent = torch.zeros(2, *ALOHA.latent_shape)
    out = inject_proprio(latent, torch.ones(2, 14), torch.tensor([1, 6]))
    assert out[0, :, 1].eq(1).all() and out[0, :, 6].eq(0).all()
    assert out[1, :, 6].eq(1).all() and out[1, :, 1].eq(0).all()


def test_inject_extract_round_trips_exactly_in_fp32():
    B = 4
    g = torch.Generator().manual_seed(0)
    actions = torch.rand(B, 50, 14, generator=g) * 2 - 1
    proprio = torch.rand(B, 14, generator=g) * 2 - 1
    fut = torch.rand(B, 14, generator=g) * 2 - 1
    value = torch.tensor([-1.0, -0.5, 0.25, 1.0])
    x = torch.randn(B, *ALOHA.latent_shape, generator=g)
    x = inject_action_chunk(x, actions, ALOHA.index("action"))
    x = inject_proprio(x, proprio, ALOHA.index("proprio"))
    x = inject_proprio(x, fut, ALOHA.index("future_proprio"))
    x = inject_value(x, value, ALOHA.index("value"))
    assert torch.equal(extract_action_chunk(x, 5, 50, 14), actions)
    assert torch.equal(extract_proprio(x, 1, 14), proprio)
    assert torch.equal(extract_proprio(x, 6, 14), fut)
    assert torch.equal(extract_value(x, -1), (value + 1) / 2)


def test_extraction_averages_full_copies_and_ignores_the_partial_one():
    x = torch.zeros(1, *ALOHA.latent_shape)
    flat = torch.zeros(12544)
    flat[:700] = 17.0           # only copy 0 non-zero: mean over 17 copies = 1
    flat[17 * 700:] = 1000.0    # partial copy must be ignored
    x[0, :, 5] = flat.reshape(16, 28, 28)
    assert torch.allclose(extract_action_chunk(x, 5, 50, 14), torch.ones(1, 50, 14))


def test_value_mapping_and_clamp():
    x = torch.zeros(4, *ALOHA.latent_shape)
    x = inject_value(x, torch.tensor([-3.0, -1.0, 0.0, 2.0]), 10)
    assert extract_value(x, 10).tolist() == [0.0, 0.0, 0.5, 1.0]
    # The mean over the frame, not a single element.
    x[0, :, 10] = 0.0
    x[0, :8, 10] = 1.0  # half the channels at 1 -> mean 0.5 -> value 0.75
    assert extract_value(x, 10)[0].item() == pytest.approx(0.75)


def test_injection_shape_errors():
    latent = torch.zeros(2, *ALOHA.latent_shape)
    with pytest.raises(ShapeError, match="batch"):
        inject_proprio(latent, torch.zeros(3, 14), 1)
    with pytest.raises(ShapeError, match="expected \\(B, chunk, action_dim\\)"):
        inject_action_chunk(latent, torch.zeros(2, 700), 5)
    with pytest.raises(ShapeError, match="out of range"):
        inject_value(latent, torch.zeros(2), 11)


def test_normalization_round_trip_no_clipping_and_dim_errors():
    g = np.random.default_rng(0)
    lo, hi = -g.random(14) - 0.5, g.random(14) + 0.5
    x = g.uniform(-2, 2, size=(50, 14))  # outside [min, max] too: no clipping
    y = normalize(x, lo, hi, "actions")
    assert np.allclose(y, 2 * (x - lo) / (hi - lo) - 1)
    assert y.max() > 1 and y.min() < -1
    assert np.allclose(unnormalize(y, lo, hi), x, atol=1e-12)
    assert np.allclose(normalize(lo, lo, hi), -1) and np.allclose(normalize(hi, lo, hi), 1)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = normalize(xt, lo, hi)
    assert yt.dtype == torch.float32 and torch.allclose(yt, torch.tensor(y, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(unnormalize(yt, lo, hi), xt, atol=1e-5)
    with pytest.raises(ShapeError, match="actions has 7 dims .* statistics have 14"):
        normalize(np.zeros((50, 7)), lo, hi, "actions")
    # A constant dimension maps to 0, not NaN.
    lo2, hi2 = lo.copy(), hi.copy()
    hi2[3] = lo2[3]
    z = normalize(x, lo2, hi2)
    assert np.isfinite(z).all() and (z[:, 3] == 0).all()
    assert np.allclose(unnormalize(z, lo2, hi2)[:, 3], lo2[3])


def test_masks_per_role_match_reference_table():
    expected = {
        "policy": [0, 1, 2, 3, 4],
        "world_model": [0, 1, 2, 3, 4, 5],
        "value_v_sas": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        "value_v_s": [0, 6, 7, 8, 9],
        "q_sa": [0, 1, 2, 3, 4, 5],
    }
    for role, frames in expected.items():
        m = condition_mask(ALOHA, role, batch_size=2)
        assert m.shape == (2, 1, 11, 28, 28)
        per_frame = m.mean(dim=(0, 1, 3, 4))
        assert per_frame.tolist() == [1.0 if t in frames else 0.0 for t in range(11)], role
        assert list(conditioning_frames(ALOHA, role)) == frames
    assert noised_frames(ALOHA, "value_v_s") == (1, 2, 3, 4, 5)
    assert noised_frames(ALOHA, "q_sa") == (6, 7, 8, 9)
    assert noised_frames(ALOHA, "policy") == ()
    assert generated_frames(ALOHA, "policy") == (5, 6, 7, 8, 9, 10)
    assert generated_frames(ALOHA, "value_v_s") == (10,)
    assert generated_frames(ALOHA, "q_sa") == (10,)
    assert loss_frame_mask(ALOHA, "value_v_s")[0].tolist() == [0.0] * 10 + [1.0]
    assert loss_frame_mask(ALOHA, "policy").eq(1).all()
    # LIBERO: 9 frames, V(s') conditions on blank + future proprio + future wrist/primary.
    assert conditioning_frames(LatentLayout.libero(), "value_v_s") == (0, 5, 6, 7)
    with pytest.raises(ConfigError, match="unknown role"):
        condition_mask(ALOHA, "critic")


def test_restore_frames():
    x, clean = torch.randn(1, *ALOHA.latent_shape), torch.randn(1, *ALOHA.latent_shape)
    out = restore_frames(x, clean, [0, 1, 5, 6])
    assert torch.equal(out[:, :, [0, 1, 5, 6]], clean[:, :, [0, 1, 5, 6]])
    assert torch.equal(out[:, :, 2], x[:, :, 2])
