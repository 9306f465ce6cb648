"""Engines: ONNX export parity with eager PyTorch, the ONNX-backed policy, batch padding, TensorRT availability."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from cosmos_policy_core.engines.base import DenoiserModule
from cosmos_policy_core.engines.export import example_denoiser_inputs, export_checkpoint, read_manifest
from cosmos_policy_core.engines.onnx_engine import OnnxDenoiser
from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.policy import CosmosPolicy
from cosmos_policy_core.testing import build_random_checkpoint, random_observation

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = build_random_checkpoint(root / "tiny", image_size=64, text_len=16)
    manifest = export_checkpoint(ckpt, root / "onnx", fmt="onnx", batch=2, steps=1)
    return ckpt, root / "onnx", manifest


def test_onnx_denoiser_matches_eager(exported):
    ckpt, out, manifest = exported
    assert manifest["denoiser_max_abs_diff"] <= 1e-4
    assert read_manifest(out)["files"] == {"denoiser_onnx": "denoiser_b2.onnx", "vae_encoder_onnx": "vae_encoder.onnx"}
    policy = CosmosPolicy.from_checkpoint(ckpt)
    net = policy.denoiser.net
    onnx = OnnxDenoiser(out / "denoiser_b2.onnx", providers=["CPUExecutionProvider"])
    # 3 rows through a batch-2 graph: split into 2 + (1 padded to 2)
    args = example_denoiser_inputs(policy.layout, 3, 16, net.config.crossattn_emb_channels, seed=5)
    with torch.no_grad():
        ref = DenoiserModule(net)(*args)
    got = onnx.predict_x0(*args)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4


def test_policy_on_onnx_engine_gives_the_same_actions(exported):
    ckpt, out, _ = exported
    torch_policy = CosmosPolicy.from_checkpoint(ckpt)
    onnx_policy = CosmosPolicy.from_checkpoint(ckpt, engine="onnx", onnx_dir=out)
    obs = random_observation(torch_policy.layout, stats=torch_policy.stats, height=96, width=128)
    cond_t = torch_policy.encode_observation(obs)
    cond_o = onnx_policy.encode_observation(obs)  # VAE encoder on ONNX Runtime too
    assert (cond_t.gt_1_C_T_H_W - cond_o.gt_1_C_T_H_W).abs().max() <= 1e-4
    for steps in (1, 3):
        a = torch_policy.act(cond_t, seed=9, num_steps=steps, return_future_images=False)
        b = onnx_policy.act(cond_o, seed=9, num_steps=steps, return_future_images=False)
        np.testing.assert_allclose(b.actions, a.actions, atol=1e-4)
        assert abs(a.value - b.value) <= 1e-4


def test_engine_errors(exported):
    ckpt, _, _ = exported
    with pytest.raises(ConfigError, match="onnx_dir"):
        CosmosPolicy.from_checkpoint(ckpt, engine="onnx")
    with pytest.raises(ConfigError, match="unknown engine"):
        CosmosPolicy.from_checkpoint(ckpt, engine="jax")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_absent_gives_a_clear_error(exported):
    from cosmos_policy_core.engines.tensorrt_engine import build_engine_from_onnx

    _, out, _ = exported
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        build_engine_from_onnx(out / "denoiser_b2.onnx", out / "denoiser_b2.plan")


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT cannot be installed on the development and GPU test machines "
                           "(reference/environment.md); its twins (ONNX Runtime, torch.compile) are tested")
def test_tensorrt_engine_matches_eager(exported, tmp_path):
    from cosmos_policy_core.engines.tensorrt_engine import TensorRTDenoiser, build_engine_from_onnx

    ckpt, out, _ = exported
    plan = build_engine_from_onnx(out / "denoiser_b2.onnx", tmp_path / "d.plan", precision="fp32")
    trt = TensorRTDenoiser.from_engine_file(plan, device="cuda")
    policy = CosmosPolicy.from_checkpoint(ckpt)
    args = example_denoiser_inputs(policy.layout, 2, 16, policy.denoiser.net.config.crossattn_emb_channels)
    with torch.no_grad():
        ref = DenoiserModule(policy.denoiser.net)(*args)
    assert (trt.predict_x0(*args).cpu() - ref).abs().max().item() <= 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_compile_matches_eager_on_gpu(exported):
    ckpt, _, _ = exported
    eager = CosmosPolicy.from_checkpoint(ckpt, device="cuda")
    compiled = CosmosPolicy.from_checkpoint(ckpt, device="cuda", compile="reduce-overhead")
    obs = random_observation(eager.layout, stats=eager.stats)
    cond = eager.encode_observation(obs)
    a = eager.act(cond, seed=1, num_steps=1, return_future_images=False)
    b = compiled.act(cond, seed=1, num_steps=1, return_future_images=False)
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-3)
