"""Wan2.1 VAE: reference parameter names, chunk/stream invariance, causality, and a diffusers cross-check."""
from __future__ import annotations

import json
import re

import pytest
import torch

from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError
from cosmos_policy_core.nn.wan_vae import (
    WAN21_LATENT_MEAN,
    WAN21_LATENT_STD,
    VAEConfig,
    WanVAE,
    latent_num_frames,
)

# Shapes read off the reference module tree (cosmos_policy/_src/predict2/tokenizers/wan2pt1.py, dim 96):
# encoder widths 96, 96, 192, 384, 384; decoder 384, 384, 384, 192, 96 with every upsampling conv halving the width.
REFERENCE_KEY_SHAPES = {
    "encoder.conv1.weight": (96, 3, 3, 3, 3),
    "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
    "encoder.downsamples.0.residual.2.weight": (96, 96, 3, 3, 3),
    "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
    "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
    "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
    "encoder.downsamples.6.residual.6.bias": (384,),
    "encoder.downsamples.8.time_conv.bias": (384,),
    "encoder.downsamples.10.residual.3.gamma": (384, 1, 1, 1),
    "encoder.middle.1.norm.gamma": (384, 1, 1),
    "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
    "encoder.middle.1.proj.weight": (384, 384, 1, 1),
    "encoder.middle.2.residual.6.weight": (384, 384, 3, 3, 3),
    "encoder.head.0.gamma": (384, 1, 1, 1),
    "encoder.head.2.weight": (32, 384, 3, 3, 3),
    "conv1.weight": (32, 32, 1, 1, 1),
    "conv2.weight": (16, 16, 1, 1, 1),
    "decoder.conv1.weight": (384, 16, 3, 3, 3),
    "decoder.middle.0.residual.2.weight": (384, 384, 3, 3, 3),
    "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
    "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
    "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.8.residual.2.weight": (192, 192, 3, 3, 3),
    "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
    "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
    "decoder.head.2.weight": (3, 96, 3, 3, 3),
}
ABSENT_KEYS = ("encoder.downsamples.2.time_conv.weight", "decoder.upsamples.11.time_conv.weight",
               "decoder.upsamples.15.residual.0.gamma", "encoder.downsamples.11.residual.0.gamma",
               "latent_mean", "latent_std")


def _random_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere (the reference zero-inits attention's proj and gains are ones)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


@pytest.fixture(scope="module")
def tiny_vae() -> WanVAE:
    vae = WanVAE.tiny().eval()
    _random_weights(vae)
    return vae


@pytest.fixture(scope="module")
def clip_41() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 41, 32, 32, generator=gen) * 2 - 1


def _to_diffusers_key(key: str, num_res_blocks: int) -> str:
    """Our (= reference Wan2.1) parameter name -> diffusers AutoencoderKLWan name."""
    if key.startswith("conv1."):
        return "quant_conv." + key[len("conv1."):]
    if key.startswith("conv2."):
        return "post_quant_conv." + key[len("conv2."):]
    key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out.", key)
    key = re.sub(r"\.middle\.0\.", ".mid_block.resnets.0.", key)
    key = re.sub(r"\.middle\.1\.", ".mid_block.attentions.0.", key)
    key = re.sub(r"\.middle\.2\.", ".mid_block.resnets.1.", key)
    key = key.replace("encoder.downsamples.", "encoder.down_blocks.")
    match = re.match(r"decoder\.upsamples\.(\d+)\.(.*)", key)
    if match:
        # Each decoder level is num_res_blocks + 1 residual blocks and one upsampler, flattened in the reference.
        idx, rest = int(match.group(1)), match.group(2)
        level, pos = divmod(idx, num_res_blocks + 2)
        inner = f"resnets.{pos}" if pos <= num_res_blocks else "upsamplers.0"
        key = f"decoder.up_blocks.{level}.{inner}.{rest}"
    for ours, theirs in ((".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
                         (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut.")):
        key = key.replace(ours, theirs)
    return key


def _diffusers_vae(config: VAEConfig):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.AutoencoderKLWan(
        base_dim=config.dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult),
        num_res_blocks=config.num_res_blocks, attn_scales=list(config.attn_scales),
        temperal_downsample=list(config.temperal_downsample), dropout=config.dropout,
        latents_mean=list(config.latent_mean), latents_std=list(config.latent_std))


def test_full_size_state_dict_matches_reference_names_and_diffusers():
    with torch.device("meta"):
        vae = WanVAE(VAEConfig.wan21())
        theirs = _diffusers_vae(VAEConfig.wan21())
    ours = vae.state_dict()
    for key, shape in REFERENCE_KEY_SHAPES.items():
        assert key in ours, key
        assert tuple(ours[key].shape) == shape, key
    for key in ABSENT_KEYS:
        assert key not in ours, key
    # 127M parameters, the Wan2.1 VAE size; diffusers' independent implementation must agree tensor by tensor.
    n_params = sum(p.numel() for p in vae.parameters())
    assert n_params == sum(p.numel() for p in theirs.parameters()) == 126_892_531
    theirs_sd = theirs.state_dict()
    converted = {_to_diffusers_key(k, 2): tuple(v.shape) for k, v in ours.items()}
    assert converted == {k: tuple(v.shape) for k, v in theirs_sd.items()}
    # diffusers' own converter for original Wan2.1 checkpoints accepts our names as they are.
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    assert set(convert_wan_vae_to_diffusers(dict(ours))) == set(theirs_sd)


def test_encode_chunked_streamed_and_one_pass_agree(tiny_vae, clip_41):
    z4 = tiny_vae.encode(clip_41)  # Wan2.1: 1, 4, 4, ...
    assert z4.shape == (1, 16, latent_num_frames(41), 4, 4) == (1, 16, 11, 4, 4)
    z16 = tiny_vae.encode(clip_41, chunk_frames=16)  # the reference's resolved temporal_window: 1, 16, 16, 8
    z_all = tiny_vae.encode(clip_41, chunk_frames=None)
    stream = tiny_vae.encoder_stream()
    pieces = [stream.push(clip_41[:, :, :5]), stream.push(clip_41[:, :, 5:17])]
    fork = stream.fork()
    pieces.append(stream.push(clip_41[:, :, 17:]))
    z_stream = torch.cat(pieces, dim=2)
    z_fork_tail = fork.push(clip_41[:, :, 17:])
    scale = z4.abs().max().item()
    assert scale > 0.1
    for other in (z16, z_all, z_stream):
        assert (z4 - other).abs().max().item() <= 1e-5 * max(scale, 1.0)
    assert torch.equal(z_fork_tail, pieces[2])
    assert stream.frames_seen == 41


def test_encode_shapes_and_errors(tiny_vae):
    z = tiny_vae.encode(torch.zeros(2, 3, 9, 16, 24))
    assert z.shape == (2, 16, 3, 2, 3)
    with pytest.raises(ShapeError, match="1 \\+ 4k"):
        tiny_vae.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ShapeError, match="multiples of 8"):
        tiny_vae.encode(torch.zeros(1, 3, 5, 12, 16))
    stream = tiny_vae.encoder_stream()
    stream.push(torch.zeros(1, 3, 1, 16, 16))
    with pytest.raises(ShapeError, match="multiple of 4"):
        stream.push(torch.zeros(1, 3, 3, 16, 16))
    with pytest.raises(ConfigError):
        tiny_vae.encode(torch.zeros(1, 3, 9, 16, 16), chunk_frames=6)


def test_encoding_is_causal_and_lone_image_differs_from_in_clip_image(tiny_vae):
    """The reference pitfall (§2.2): an image's latent depends on the blank frames before it in the clip."""
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 1, 32, 32, generator=gen) * 2 - 1
    blank = -torch.ones(1, 3, 5, 32, 32)  # black frames in [-1, 1]
    clip = torch.cat([blank, image.expand(-1, -1, 4, -1, -1), -torch.ones(1, 3, 4, 32, 32)], dim=2)  # 13 frames
    z_clip = tiny_vae.encode(clip)
    z_alone = tiny_vae.encode(image)
    assert z_alone.shape[2] == 1
    in_clip = z_clip[:, :, 2]  # pixel frames 5-8, like the ALOHA wrist camera slot
    assert (in_clip - z_alone[:, :, 0]).abs().max().item() > 0.05
    # Only the clip's first frame is a lone image: latent 0 equals encoding frame 0 by itself.
    torch.testing.assert_close(z_clip[:, :, :1], tiny_vae.encode(clip[:, :, :1]), atol=1e-6, rtol=0)
    # Causality: later frames never change earlier latents.
    changed = clip.clone()
    changed[:, :, 9:] = 0.5
    z_changed = tiny_vae.encode(changed)
    torch.testing.assert_close(z_changed[:, :, :3], z_clip[:, :, :3], atol=1e-6, rtol=0)
    assert (z_changed[:, :, 3] - z_clip[:, :, 3]).abs().max().item() > 1e-3


def test_matches_diffusers_autoencoder_kl_wan(tiny_vae, clip_41):
    theirs = _diffusers_vae(tiny_vae.config).eval()
    converted = {_to_diffusers_key(k, tiny_vae.config.num_res_blocks): v for k, v in tiny_vae.state_dict().items()}
    theirs.load_state_dict(converted, strict=True)
    mean = torch.tensor(WAN21_LATENT_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENT_STD).view(1, 16, 1, 1, 1)
    video = clip_41[:, :, :17]
    with torch.no_grad():
        mu_theirs = theirs.encode(video).latent_dist.mean
        z_ours = tiny_vae.encode(video)
        assert (z_ours - (mu_theirs - mean) / std).abs().max().item() <= 1e-5
        video_theirs = theirs.decode(z_ours * std + mean).sample
    video_ours = tiny_vae.decode(z_ours)
    assert video_ours.shape == video_theirs.shape == video.shape
    assert (video_ours - video_theirs).abs().max().item() <= 1e-5
    assert video_ours.std().item() > 0.05  # a decoder output that carries signal, not a clamped constant


def test_decode_round_trip_shape_range_and_chunking(tiny_vae, clip_41):
    z = tiny_vae.encode(clip_41)
    video = tiny_vae.decode(z)
    assert video.shape == clip_41.shape
    assert video.min().item() >= -1.0 and video.max().item() <= 1.0
    z5 = z[:, :, :5]
    raw = tiny_vae.decode(z5, clamp=False)
    torch.testing.assert_close(raw.clamp(-1, 1), video[:, :, :17], atol=1e-5, rtol=0)  # causal: a prefix decodes alike
    torch.testing.assert_close(tiny_vae.decode(z5, chunk_latents=None, clamp=False), raw, atol=1e-5, rtol=1e-5)
    stream = tiny_vae.decoder_stream(clamp=False)
    pieces = [stream.push(z5[:, :, :2]), stream.push(z5[:, :, 2:3]), stream.push(z5[:, :, 3:])]
    assert [p.shape[2] for p in pieces] == [5, 4, 8]
    torch.testing.assert_close(torch.cat(pieces, dim=2), raw, atol=1e-5, rtol=1e-5)


def test_bf16_close_to_fp32(tiny_vae, clip_41):
    vae_bf16 = WanVAE.tiny()
    vae_bf16.load_state_dict(tiny_vae.state_dict())
    vae_bf16 = vae_bf16.to(torch.bfloat16)
    video = clip_41[:, :, :9]
    z32 = tiny_vae.encode(video)
    z16 = vae_bf16.encode(video)
    assert z16.dtype == torch.float32  # returned in the input's dtype, as the reference
    assert vae_bf16.encode(video.bfloat16()).dtype == torch.bfloat16
    rel = ((z16 - z32).norm() / z32.norm()).item()
    assert 0 < rel < 0.05
    out = vae_bf16.decode(z32.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == video.shape


def test_checkpoint_load_strict(tmp_path, tiny_vae, clip_41):
    path = tmp_path / "tokenizer.pth"
    torch.save(tiny_vae.state_dict(), path)
    loaded = WanVAE.from_checkpoint(path, VAEConfig.tiny())
    torch.testing.assert_close(loaded.encode(clip_41[:, :, :5]), tiny_vae.encode(clip_41[:, :, :5]), atol=0, rtol=0)
    torch.save({"model." + k: v for k, v in tiny_vae.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="missing"):
        WanVAE.from_checkpoint(path, VAEConfig.tiny())
    torch.save(tiny_vae.state_dict(), path)
    with pytest.raises(CheckpointError, match="shapes"):
        WanVAE.from_checkpoint(path, VAEConfig(dim=16))
    with pytest.raises(CheckpointError, match="not found"):
        WanVAE.from_checkpoint(tmp_path / "absent.pth")


def test_config_round_trip_and_validation():
    for cfg in (VAEConfig.wan21(), VAEConfig.tiny()):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert VAEConfig.from_dict(data) == cfg
    assert VAEConfig.wan21().spatial_factor == 8 and VAEConfig.wan21().temporal_factor == 4
    with pytest.raises(ConfigError, match="unknown"):
        VAEConfig.from_dict({"dims": 4})
    with pytest.raises(ConfigError, match="temperal_downsample"):
        VAEConfig(temperal_downsample=(True,))
    with pytest.raises(ConfigError, match="latent_mean"):
        VAEConfig(z_dim=8)


@pytest.mark.slow
def test_encode_exports_to_onnx_with_fixed_shapes(tmp_path, tiny_vae):
    """Cache handling is shape-driven Python, so the chunked encode exports as one static graph."""
    ort = pytest.importorskip("onnxruntime")

    class Encode(torch.nn.Module):
        def __init__(self, vae: WanVAE) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, video: torch.Tensor) -> torch.Tensor:
            return self.vae.encode(video)

    gen = torch.Generator().manual_seed(3)
    example = torch.rand(1, 3, 9, 16, 16, generator=gen) * 2 - 1
    path = tmp_path / "vae_encode.onnx"
    torch.onnx.export(Encode(tiny_vae).eval(), (example,), str(path), dynamo=True, opset_version=18)
    session = ort.InferenceSession(str(path))
    video = torch.rand(1, 3, 9, 16, 16, generator=gen) * 2 - 1
    (got,) = session.run(None, {session.get_inputs()[0].name: video.numpy()})
    assert got.shape == (1, 16, 3, 2, 2)
    assert abs(got - tiny_vae.encode(video).numpy()).max() <= 1e-5
