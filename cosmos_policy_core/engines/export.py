"""Export of the fixed-shape denoiser and the VAE encoder (ONNX, then optionally TensorRT) and loading them back.

An export directory holds denoiser_b{N}.onnx, vae_encoder.onnx, optional .plan engines and export.json (shapes, opset, parity).
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from cosmos_policy_core.engines.base import DenoiserModule
from cosmos_policy_core.engines.onnx_engine import DENOISER_INPUTS
from cosmos_policy_core.errors import CheckpointError, ConfigError
from cosmos_policy_core.layout import LatentLayout, condition_mask

log = logging.getLogger(__name__)

MANIFEST = "export.json"
DEFAULT_OPSET = 18
FORMATS = ("onnx", "tensorrt")


def denoiser_file(batch: int) -> str:
    return f"denoiser_b{batch}.onnx"


class VAEEncoderModule(nn.Module):
    """[-1, 1] clip (B, 3, T, H, W) -> normalized latent: one causal pass, no Python state between calls."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video, chunk_frames=None)


def example_denoiser_inputs(layout: LatentLayout, batch: int, text_len: int, text_dim: int,
                            seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs at the scale the sampler produces them: x_σ at σ_max, unit-variance gt, the policy mask."""
    g = torch.Generator().manual_seed(seed)
    C, T, H, W = layout.latent_shape
    x_sigma = torch.randn(batch, C, T, H, W, generator=g) * 80.0
    sigma = torch.full((batch,), 80.0)
    gt = torch.randn(batch, C, T, H, W, generator=g)
    mask = condition_mask(layout, "policy", batch)
    crossattn = torch.randn(batch, text_len, text_dim, generator=g) * 0.1
    return x_sigma, sigma, gt, mask, crossattn


_RMS_NORM_REGISTERED: set[int] = set()


def _register_rms_norm_symbolic(opset: int) -> None:
    """Teach the TorchScript exporter aten::rms_norm (ONNX has RMSNormalization only from opset 23).

    y = x / sqrt(mean(x², last dims) + eps) * weight, in the input's dtype; the dynamo exporter
    decomposes rms_norm by itself.
    """
    if opset in _RMS_NORM_REGISTERED:
        return
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "is", "v", "v")
    def rms_norm(g, x, normalized_shape, weight, eps):
        eps_value = sh._maybe_get_const(eps, "f")
        if sh._is_none(eps) or not isinstance(eps_value, float):
            eps_value = float(torch.finfo(torch.float32).eps)
        axes = g.op("Constant", value_t=torch.tensor(list(range(-len(normalized_shape), 0)), dtype=torch.long))
        mean_sq = g.op("ReduceMean", g.op("Mul", x, x), axes, keepdims_i=1)
        denom = g.op("Sqrt", g.op("Add", mean_sq, g.op("Constant", value_t=torch.tensor(eps_value))))
        y = g.op("Div", x, denom)
        return y if sh._is_none(weight) else g.op("Mul", y, weight)

    torch.onnx.register_custom_op_symbolic("aten::rms_norm", rms_norm, opset)
    _RMS_NORM_REGISTERED.add(opset)


def _onnx_export(module: nn.Module, args: tuple, path: Path, input_names, output_names, opset: int,
                 dynamo: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not dynamo:
        _register_rms_norm_symbolic(opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings are about shapes we fix
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          opset_version=opset, dynamo=dynamo, do_constant_folding=True)


@torch.no_grad()
def export_denoiser_onnx(net: nn.Module, layout: LatentLayout, path: str | Path, *, batch: int = 1,
                         text_len: int = 512, opset: int = DEFAULT_OPSET, dynamo: bool = False,
                         sigma_conditional: float = 0.0) -> Path:
    """Export preconditioning + DiT for one fixed batch and latent shape (fp32 weights).

    The RoPE tables for the layout's token grid are computed before tracing, so they enter the
    graph as constants; timesteps are per latent frame (from the mask) and no branch depends on a
    tensor value, so the graph is static. dynamo=True uses the torch.export-based exporter instead
    of the TorchScript one (slower to export, same numbers).
    """
    if opset < 17:
        raise ConfigError(f"opset {opset} < 17: LayerNormalization needs opset 17 or newer")
    path = Path(path)
    net = net.float().eval()
    cfg = net.config
    _, T, H, W = layout.latent_shape
    net.rope_tables(T // cfg.patch_temporal, H // cfg.patch_spatial, W // cfg.patch_spatial,
                    next(net.parameters()).device)
    module = DenoiserModule(net, sigma_conditional).eval()
    args = example_denoiser_inputs(layout, batch, text_len, cfg.crossattn_emb_channels)
    t0 = time.perf_counter()
    _onnx_export(module, args, path, DENOISER_INPUTS, ["x0"], opset, dynamo)
    log.info("exported denoiser (batch %d) to %s in %.1f s", batch, path, time.perf_counter() - t0)
    return path


@torch.no_grad()
def export_vae_encoder_onnx(vae: nn.Module, layout: LatentLayout, path: str | Path, *,
                            opset: int = DEFAULT_OPSET, dynamo: bool = False) -> Path:
    """Export the VAE encoder for one (1, 3, T_pix, S, S) clip."""
    path = Path(path)
    vae = vae.float().eval()
    S = layout.image_size
    video = torch.rand(1, 3, layout.num_pixel_frames, S, S, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t0 = time.perf_counter()
    _onnx_export(VAEEncoderModule(vae).eval(), (video,), path, ["video"], ["latent"], opset, dynamo)
    log.info("exported VAE encoder to %s in %.1f s", path, time.perf_counter() - t0)
    return path


@torch.no_grad()
def denoiser_parity(net: nn.Module, layout: LatentLayout, onnx_path: str | Path, *, batch: int,
                    text_len: int, seed: int = 1) -> float:
    """max |x0_onnx - x0_torch| on fresh random inputs (fp32)."""
    from cosmos_policy_core.engines.onnx_engine import OnnxDenoiser

    args = example_denoiser_inputs(layout, batch, text_len, net.config.crossattn_emb_channels, seed=seed)
    ref = DenoiserModule(net.float().eval())(*args)
    got = OnnxDenoiser(onnx_path, providers=["CPUExecutionProvider"]).predict_x0(*args)
    return float((got - ref).abs().max())


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, *, fmt: str = "onnx", batch: int = 1,
                      steps: int = 1, opset: int = DEFAULT_OPSET, dynamo: bool = False, validate: bool = True,
                      include_vae: bool = True, precision: str = "fp16") -> dict:
    """Export a checkpoint directory's denoiser (+ VAE encoder); returns and writes the manifest.

    `steps` is recorded as the step count the engine is meant to serve (1 = the real-time hot
    path); the graph itself is one network evaluation, so any step count runs on it.
    """
    from cosmos_policy_core.checkpoint import load_checkpoint_dir

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if batch < 1 or steps < 1:
        raise ConfigError(f"batch and steps must be >= 1, got batch={batch}, steps={steps}")
    ckpt = load_checkpoint_dir(checkpoint_dir, load_vae=include_vae)
    if not ckpt.text_embeddings:
        raise CheckpointError(f"{checkpoint_dir} has no text embeddings: the export needs their length")
    text_len, text_dim = next(iter(ckpt.text_embeddings.values())).shape[-2:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = ckpt.build_dit(torch.float32).eval()
    manifest = {
        "format": fmt, "batch": batch, "steps": steps, "opset": opset, "exporter": "dynamo" if dynamo else "torchscript",
        "latent_shape": list(ckpt.layout.latent_shape), "text_shape": [int(text_len), int(text_dim)],
        "layout": ckpt.layout.to_dict(), "sigma_conditional": ckpt.diffusion.sigma_conditional,
        "checkpoint": str(Path(checkpoint_dir).resolve()), "files": {},
    }
    den_path = export_denoiser_onnx(net, ckpt.layout, out / denoiser_file(batch), batch=batch, text_len=int(text_len),
                                    opset=opset, dynamo=dynamo, sigma_conditional=ckpt.diffusion.sigma_conditional)
    manifest["files"]["denoiser_onnx"] = den_path.name
    if include_vae:
        vae = ckpt.build_vae(torch.float32)
        manifest["files"]["vae_encoder_onnx"] = export_vae_encoder_onnx(vae, ckpt.layout, out / "vae_encoder.onnx",
                                                                        opset=opset, dynamo=dynamo).name
    if validate:
        manifest["denoiser_max_abs_diff"] = denoiser_parity(net, ckpt.layout, den_path, batch=batch,
                                                            text_len=int(text_len))
        log.info("ONNX denoiser vs eager: max |diff| = %.3g", manifest["denoiser_max_abs_diff"])
    if fmt == "tensorrt":
        from cosmos_policy_core.engines.tensorrt_engine import build_engine_from_onnx

        plan = build_engine_from_onnx(den_path, out / den_path.with_suffix(".plan").name, precision=precision)
        manifest["files"]["denoiser_trt"] = plan.name
        manifest["precision"] = precision
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{export_dir} has no {MANIFEST}; write it with `cosmos-aloha export`") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e


def load_exported(export_dir: str | Path, *, engine: str = "onnx", device="cpu", providers: list[str] | None = None):
    """(Denoiser, VAE encoder or None) from an export directory, for `CosmosPolicy(engine=...)`."""
    from cosmos_policy_core.engines.onnx_engine import OnnxDenoiser, OnnxVAEEncoder

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    files = manifest.get("files", {})
    encoder_file = files.get("vae_encoder_onnx")
    encoder = OnnxVAEEncoder(export_dir / encoder_file, providers) if encoder_file else None
    if engine == "onnx":
        return OnnxDenoiser(export_dir / files["denoiser_onnx"], providers), encoder
    if engine == "tensorrt":
        from cosmos_policy_core.engines.tensorrt_engine import TensorRTDenoiser

        if "denoiser_trt" not in files:
            raise CheckpointError(f"{export_dir} has no TensorRT engine; export with --format tensorrt")
        return TensorRTDenoiser.from_engine_file(export_dir / files["denoiser_trt"], device=device), encoder
    raise ConfigError(f"unknown exported engine {engine!r}; choose 'onnx' or 'tensorrt'")


__all__ = ["VAEEncoderModule", "example_denoiser_inputs", "export_denoiser_onnx", "export_vae_encoder_onnx",
           "denoiser_parity", "export_checkpoint", "read_manifest", "load_exported", "denoiser_file", "FORMATS"]
