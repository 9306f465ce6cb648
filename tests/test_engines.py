"""Engines: one resolution of engine names, the exported graphs (fp32 / fp16 / bf16) on ONNX Runtime against eager PyTorch,
the conditioning VAE encoder, the checks an export directory passes at load, and the TensorRT builder against a recording fake."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from cosmos_policy_core.engines.base import DenoiserModule
from cosmos_policy_core.engines.encoder import TorchClipEncoder, conditioning_pixel_frames, constant_prefix_frames
from cosmos_policy_core.engines.export import (
    MANIFEST, build_tensorrt_engines, example_denoiser_inputs, export_checkpoint, parity_failures, read_manifest,
)
from cosmos_policy_core.engines.resolve import ENGINES, resolve_engine
from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError
from cosmos_policy_core.layout import LatentLayout, build_pixel_clip, clip_to_vae_input
from cosmos_policy_core.runtime.policy import CosmosPolicy
from cosmos_policy_core.testing import build_random_checkpoint, random_observation

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = build_random_checkpoint(root / "tiny", image_size=64, text_len=16)
    manifest = export_checkpoint(ckpt, root / "onnx", fmt="onnx", batch=2, steps=1)
    return ckpt, root / "onnx", manifest


@pytest.fixture(scope="module")
def low_precision(exported, tmp_path_factory):
    """The same checkpoint exported at bf16 (both graphs) and at fp16 (the denoiser), batch 1."""
    ckpt, _, _ = exported
    root = tmp_path_factory.mktemp("low_precision")
    return {p: (root / p, export_checkpoint(ckpt, root / p, precision=p, include_vae=p == "bf16"))
            for p in ("bf16", "fp16")}


# --- resolution --------------------------------------------------------------------------------------
def test_engine_names_resolve_to_device_dtype_and_mode(tmp_path):
    cpu = resolve_engine("torch", device="cpu")
    assert (cpu.engine, cpu.device.type, cpu.precision, cpu.compile_mode) == ("torch", "cpu", "fp32", None)
    compiled = resolve_engine("compile", device="cpu")
    assert compiled.compile_mode == "default" and compiled.dtype == torch.float32
    assert resolve_engine("compile", device="cpu", dtype="bf16", compile_mode="max-autotune").dtype == torch.bfloat16
    assert resolve_engine("torch", device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    (tmp_path / "export").mkdir()
    onnx = resolve_engine("onnx", device="cpu", checkpoint=tmp_path)
    assert onnx.export_dir == tmp_path / "export" and onnx.precision is None      # whatever was exported
    with pytest.raises(ConfigError, match="unknown engine 'jax'.*compile"):
        resolve_engine("jax")
    with pytest.raises(ConfigError, match="compile_mode .* applies to engine 'compile'"):
        resolve_engine("torch", compile_mode="default")
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        resolve_engine("torch", dtype="int8")
    with pytest.raises(ConfigError, match="export directory .*missing.* does not exist.*cosmos-aloha export"):
        resolve_engine("onnx", export_dir=tmp_path / "missing")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="tensorrt' runs on a CUDA device"):
            resolve_engine("tensorrt", device="cpu", checkpoint=tmp_path)
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_engine("torch", device="cuda")


# --- the conditioning encoder ---------------------------------------------------------------------------
def test_conditioning_encoder_equals_the_causal_encode_of_the_clips_first_frames(exported):
    ckpt, _, _ = exported
    policy = CosmosPolicy.from_checkpoint(ckpt)
    lay = policy.layout
    assert (conditioning_pixel_frames(LatentLayout.aloha()), constant_prefix_frames(LatentLayout.aloha())) == (17, 5)
    encoder = TorchClipEncoder(policy.vae, lay)
    obs = random_observation(lay, stats=policy.stats, height=96, width=128)
    clip = build_pixel_clip(lay, {k: torch.from_numpy(v) for k, v in policy.preprocess_images(obs.images).items()})
    video = clip_to_vae_input(clip)
    got = encoder(video)
    full = policy.vae.encode(video, chunk_frames=None)
    assert got.shape == (1, 16, 5, 8, 8)
    torch.testing.assert_close(got, full[:, :, :5], atol=1e-5, rtol=0)
    with pytest.raises(ShapeError, match=r"T >= 17"):
        encoder(video[:, :, :9])


# --- the exported graphs on ONNX Runtime ------------------------------------------------------------------
def test_onnx_denoiser_matches_eager(exported):
    ckpt, out, manifest = exported
    assert manifest["parity"]["denoiser"]["same_precision"] <= 1e-5 and not parity_failures(manifest)
    graphs = read_manifest(out)["graphs"]
    assert (graphs["denoiser"]["onnx"], graphs["vae_encoder"]["onnx"]) == ("denoiser_b2.onnx", "vae_encoder.onnx")
    assert graphs["vae_encoder"]["inputs"]["video"]["shape"] == [1, 3, 12, 64, 64]
    assert graphs["vae_encoder"]["outputs"]["latent"]["shape"] == [1, 16, 5, 8, 8]
    policy = CosmosPolicy.from_checkpoint(ckpt)
    net = policy.denoiser.net
    onnx = CosmosPolicy.from_checkpoint(ckpt, engine="onnx", export_dir=out).denoiser
    # 3 rows through a batch-2 graph: split into 2 + (1 padded to 2)
    args = example_denoiser_inputs(policy.layout, 3, 16, net.config.crossattn_emb_channels, seed=5)
    with torch.no_grad():
        ref = DenoiserModule(net)(*args)
    got = onnx.predict_x0(*args)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4


def test_policy_on_onnx_engine_gives_the_same_actions_and_frames(exported):
    ckpt, out, _ = exported
    torch_policy = CosmosPolicy.from_checkpoint(ckpt)
    onnx_policy = CosmosPolicy.from_checkpoint(ckpt, engine="onnx", export_dir=out)
    obs = random_observation(torch_policy.layout, stats=torch_policy.stats, height=96, width=128)
    cond_t = torch_policy.encode_observation(obs)
    cond_o = onnx_policy.encode_observation(obs)  # the conditioning frames on the exported encoder
    assert cond_o.clean_frames == 5
    assert (cond_t.gt_1_C_T_H_W[:, :, :5] - cond_o.gt_1_C_T_H_W[:, :, :5]).abs().max() <= 1e-4
    for steps in (1, 3):
        a = torch_policy.act(cond_t, seed=9, num_steps=steps, return_future_images=steps == 1)
        b = onnx_policy.act(cond_o, seed=9, num_steps=steps, return_future_images=steps == 1)
        np.testing.assert_allclose(b.actions, a.actions, atol=1e-4)
        assert abs(a.value - b.value) <= 1e-4
        # the decode encodes the restored frames after the conditioning ones itself: the same predicted images
        for cam in a.future_images or {}:
            assert np.abs(a.future_images[cam].astype(int) - b.future_images[cam].astype(int)).max() <= 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_graphs_keep_their_types_and_run_on_onnx_runtime(exported, low_precision, precision):
    import onnx

    from cosmos_policy_core.engines.onnx_engine import graph_precision

    ckpt, _, _ = exported
    precision_type = {"bf16": onnx.TensorProto.BFLOAT16, "fp16": onnx.TensorProto.FLOAT16}
    out, manifest = low_precision[precision]
    assert manifest["precision"] == precision and not parity_failures(manifest)
    for graph in manifest["graphs"].values():
        model = onnx.load(str(out / graph["onnx"]))
        assert graph_precision(model) == precision
        weights = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
        assert {t.data_type for t in model.graph.initializer if t.name in weights} == {precision_type[precision]}
        assert {i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)} == {1}  # fp32 I/O
    # the precision shows: the graph differs from fp32 by more than float32 rounding, less than a broken graph
    assert 1e-5 < manifest["parity"]["denoiser"]["vs_fp32"] < 0.1
    fp32 = CosmosPolicy.from_checkpoint(ckpt)
    low = CosmosPolicy.from_checkpoint(ckpt, engine="onnx", export_dir=out, dtype=precision)
    obs = random_observation(fp32.layout, stats=fp32.stats, height=96, width=128)
    a = fp32.act(obs, seed=3, num_steps=1, return_future_images=False)
    b = low.act(obs, seed=3, num_steps=1, return_future_images=False)
    span = fp32.stats.actions_max - fp32.stats.actions_min
    assert np.abs((b.actions - a.actions) / span).max() < 0.05


# --- what an export directory is checked for at load -----------------------------------------------------
def test_export_directory_errors_name_the_file_and_what_was_expected(exported, low_precision, tmp_path):
    ckpt, out, _ = exported
    with pytest.raises(CheckpointError, match=r"export\.json: the graphs were exported at fp32, bf16 was asked for"):
        CosmosPolicy.from_checkpoint(ckpt, engine="onnx", export_dir=out, dtype="bf16")
    # another checkpoint's export
    other = build_random_checkpoint(tmp_path / "other", image_size=64, text_len=16, seed=1)
    with pytest.raises(CheckpointError, match=r"export\.json was exported from .*tiny.*model\.safetensors"):
        CosmosPolicy.from_checkpoint(other, engine="onnx", export_dir=out)
    # a checkpoint of another layout: the shapes say so
    big = build_random_checkpoint(tmp_path / "big", image_size=96, text_len=16)
    shutil.copytree(out, tmp_path / "big_export")
    manifest = json.loads((tmp_path / "big_export" / MANIFEST).read_text())
    from cosmos_policy_core.engines.export import checkpoint_fingerprint

    manifest["checkpoint"]["fingerprint"] = checkpoint_fingerprint(big)
    (tmp_path / "big_export" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShapeError, match=r"denoiser_b2\.onnx takes latents of shape \(B, 16, 11, 8, 8\).*"
                                         r"needs \(B, 16, 11, 12, 12\)"):
        CosmosPolicy.from_checkpoint(big, engine="onnx", export_dir=tmp_path / "big_export")
    # a missing graph file
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "vae_encoder.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"vae_encoder\.onnx does not exist"):
        CosmosPolicy.from_checkpoint(ckpt, engine="onnx", export_dir=broken)
    # a graph of another precision dropped into the directory
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.copy(low_precision["bf16"][0] / "vae_encoder.onnx", mixed / "vae_encoder.onnx")
    with pytest.raises(CheckpointError, match=r"vae_encoder\.onnx holds bf16 weights, its export manifest says fp32"):
        CosmosPolicy.from_checkpoint(ckpt, engine="onnx", export_dir=mixed)
    # an export directory from an older version, and none at all
    (mixed / MANIFEST).write_text(json.dumps({"format": "onnx", "files": {}}))
    with pytest.raises(CheckpointError, match="not a version-2 export manifest"):
        CosmosPolicy.from_checkpoint(ckpt, engine="onnx", export_dir=mixed)
    with pytest.raises(ConfigError, match=r"needs the export directory .*tiny/export.*cosmos-aloha export"):
        CosmosPolicy.from_checkpoint(ckpt, engine="onnx")


# --- TensorRT: the builder against a fake tensorrt module that records every call -----------------------
class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


def fake_tensorrt(version: str, *, has_precision_flags: bool, strongly_typed: bool = True):
    """A `tensorrt` module with the build API of `version`; 11.x has no BuilderFlag.FP16 / BF16."""
    rec = _Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.recorder = rec

    class Logger:
        WARNING = 2

        def __init__(self, level):
            rec.calls.append(("Logger", level))

    class _Flags:
        def __init__(self, names):
            self._names = names

        def __getattr__(self, name):
            rec.calls.append(("flag_read", name))
            if name not in self._names:
                raise AttributeError(name)
            return self._names[name]

    creation = {"EXPLICIT_BATCH": 0}
    if strongly_typed:
        creation["STRONGLY_TYPED"] = 1
    builder_flags = {"TF32": 7, "DEBUG": 0}
    if has_precision_flags:
        builder_flags.update(FP16=0, BF16=17, INT8=1, STRICT_TYPES=11)
    trt.NetworkDefinitionCreationFlag = _Flags(creation)
    trt.BuilderFlag = _Flags(builder_flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            rec.calls.append(("set_flag", flag))

    class Network:
        pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            rec.calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network",))
            return b"PLAN"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec.calls.append(("parse_from_file", path))
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


@pytest.mark.parametrize("version,has_precision_flags", [("10.13.3.9", True), ("11.4.0.106", False)])
def test_tensorrt_builds_strongly_typed_networks_without_precision_flags(exported, monkeypatch, tmp_path, version,
                                                                          has_precision_flags):
    from cosmos_policy_core.engines.tensorrt_engine import build_engine_from_onnx

    _, out, _ = exported
    trt = fake_tensorrt(version, has_precision_flags=has_precision_flags)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = build_engine_from_onnx(out / "denoiser_b2.onnx", tmp_path / "d.plan")
    assert plan.read_bytes() == b"PLAN"
    calls = trt.recorder.calls
    assert ("create_network", 1 << 1) in calls          # strongly typed: precision comes from the graph
    assert ("parse_from_file", str(out / "denoiser_b2.onnx")) in calls
    precision_flags = {"FP16", "BF16", "INT8", "FP8", "STRICT_TYPES", "OBEY_PRECISION_CONSTRAINTS",
                       "PREFER_PRECISION_CONSTRAINTS"}
    assert not [c for c in calls if c[0] == "flag_read" and c[1] in precision_flags | {"EXPLICIT_BATCH"}]
    assert not [c for c in calls if c[0] == "set_flag"]
    # an export directory: every graph gets an engine, the version is recorded for the load-time check
    shutil.copytree(out, tmp_path / "trt")
    manifest = build_tensorrt_engines(tmp_path / "trt")
    assert manifest["tensorrt_version"] == version and read_manifest(tmp_path / "trt") == manifest
    assert {g["tensorrt"] for g in manifest["graphs"].values()} == {"denoiser_b2.plan", "vae_encoder.plan"}
    assert (tmp_path / "trt" / "vae_encoder.plan").read_bytes() == b"PLAN"


def test_tensorrt_without_strongly_typed_networks_is_refused(exported, monkeypatch, tmp_path):
    from cosmos_policy_core.engines.tensorrt_engine import build_engine_from_onnx, check_version

    _, out, _ = exported
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("8.6.1", has_precision_flags=True, strongly_typed=False))
    with pytest.raises(ConfigError, match="TensorRT 8.6.1 is too old.*10.x/11.x"):
        build_engine_from_onnx(out / "denoiser_b2.onnx", tmp_path / "d.plan")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.4.0.106", has_precision_flags=False))
    with pytest.raises(CheckpointError, match="built with TensorRT 10.13.3.9, this machine has 11.4.0.106"):
        check_version("10.13.3.9", tmp_path / MANIFEST)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_absent_gives_a_clear_error(exported):
    from cosmos_policy_core.engines.tensorrt_engine import build_engine_from_onnx

    _, out, _ = exported
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        build_engine_from_onnx(out / "denoiser_b2.onnx", out / "denoiser_b2.plan")


def test_engines_list_is_the_one_the_nodes_and_cli_offer():
    assert ENGINES == ("torch", "compile", "onnx", "tensorrt")


# --- torch.compile and the GPU -------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_engine_matches_eager_on_cpu(exported):
    ckpt, _, _ = exported
    eager = CosmosPolicy.from_checkpoint(ckpt)
    compiled = CosmosPolicy.from_checkpoint(ckpt, engine="compile")
    assert compiled.denoiser.name == "policy+compile" and compiled._vae_encoder.name == "torch+compile"
    obs = random_observation(eager.layout, stats=eager.stats, height=96, width=128)
    a = eager.act(obs, seed=1, num_steps=1, return_future_images=False)
    b = compiled.act(obs, seed=1, num_steps=1, return_future_images=False)
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT cannot be installed on the development and GPU test machines "
                           "(reference/environment.md); its twins (ONNX Runtime, torch.compile) are tested")
def test_tensorrt_engines_match_eager(exported, tmp_path):
    ckpt, _, _ = exported
    export_checkpoint(ckpt, tmp_path / "trt", fmt="tensorrt", precision="fp32")
    trt_policy = CosmosPolicy.from_checkpoint(ckpt, engine="tensorrt", device="cuda", export_dir=tmp_path / "trt")
    eager = CosmosPolicy.from_checkpoint(ckpt)
    obs = random_observation(eager.layout, stats=eager.stats)
    a = eager.act(obs, seed=1, num_steps=1, return_future_images=False)
    b = trt_policy.act(obs, seed=1, num_steps=1, return_future_images=False)
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compile_engine_matches_eager_on_gpu(exported):
    ckpt, _, _ = exported
    eager = CosmosPolicy.from_checkpoint(ckpt, device="cuda", dtype="fp32")
    compiled = CosmosPolicy.from_checkpoint(ckpt, device="cuda", dtype="fp32", engine="compile")
    obs = random_observation(eager.layout, stats=eager.stats)
    a = eager.act(obs, seed=1, num_steps=1, return_future_images=False)
    b = compiled.act(obs, seed=1, num_steps=1, return_future_images=False)
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-3)
