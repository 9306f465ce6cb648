"""Export of the fixed-shape denoiser and the conditioning VAE encoder (ONNX, then TensorRT) and loading them back.

An export directory holds denoiser_b{N}.onnx, vae_encoder.onnx, their .plan engines (tensorrt) and export.json: the checkpoint's
fingerprint, the precision and every graph's input / output shapes, checked when the directory is loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from cosmos_policy_core.engines.base import DenoiserModule
from cosmos_policy_core.engines.encoder import ConditioningEncoderModule
from cosmos_policy_core.engines.onnx_engine import DENOISER_INPUTS
from cosmos_policy_core.engines.resolve import precision_name, torch_dtype
from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError
from cosmos_policy_core.layout import LatentLayout, condition_mask

log = logging.getLogger(__name__)

MANIFEST = "export.json"
MANIFEST_FORMAT = "cosmos_aloha.export"
MANIFEST_VERSION = 2
DEFAULT_OPSET = 18
FORMATS = ("onnx", "tensorrt")
ENCODER_FILE = "vae_encoder.onnx"
# Export vs eager PyTorch at the same precision, relative to the output's largest magnitude: a correct graph
# differs by float rounding (fp32 ~1e-6, bf16 / fp16 a few units of their last place); a broken one by O(1).
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}
_FINGERPRINT_BLOCKS = 16
_FINGERPRINT_BLOCK_BYTES = 1 << 16


def denoiser_file(batch: int) -> str:
    return f"denoiser_b{batch}.onnx"


# --- checkpoint identity ---------------------------------------------------------------------------
def file_fingerprint(path: str | Path) -> str:
    """sha256 of a weight file's size, its first MiB (the safetensors header) and 16 blocks spread over it.

    Two checkpoints' weights differ almost everywhere, so this tells them apart while reading ~2 MiB of a
    4 GB file, fast enough to check at every load.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        for i in range(_FINGERPRINT_BLOCKS):
            f.seek(size * i // _FINGERPRINT_BLOCKS)
            h.update(f.read(_FINGERPRINT_BLOCK_BYTES))
    return h.hexdigest()[:32]


def checkpoint_fingerprint(checkpoint_dir: str | Path) -> dict[str, str]:
    """Weight file name -> fingerprint, for the files an export is made of (DiT, and the VAE if present)."""
    from cosmos_policy_core.checkpoint import MODEL_FILE, VAE_FILE

    checkpoint_dir = Path(checkpoint_dir)
    return {name: file_fingerprint(checkpoint_dir / name) for name in (MODEL_FILE, VAE_FILE)
            if (checkpoint_dir / name).is_file()}


# --- graphs -----------------------------------------------------------------------------------------
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


def example_camera_frames(module: ConditioningEncoderModule, seed: int = 0) -> torch.Tensor:
    """(1, 3, F, S, S) camera frames in [-1, 1], four copies per image as `build_pixel_clip` lays them out."""
    S = module.image_size
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, module.input_frames // 4 + 1, S, S, generator=g) * 2 - 1
    return images.repeat_interleave(4, dim=2)[:, :, : module.input_frames].contiguous()


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


def _io_spec(names, tensors) -> dict:
    return {n: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for n, t in zip(names, tensors)}


@torch.no_grad()
def export_denoiser_onnx(net: nn.Module, layout: LatentLayout, path: str | Path, *, batch: int = 1,
                         text_len: int = 512, opset: int = DEFAULT_OPSET, dynamo: bool = False,
                         sigma_conditional: float = 0.0) -> dict:
    """Export preconditioning + DiT for one fixed batch and latent shape; returns the graph's manifest entry.

    The DiT's weights and activations keep the network's dtype inside the graph (the types TensorRT's
    strongly typed network takes); inputs and output are float32, the preconditioning runs in float32. The RoPE
    tables for the layout's token grid are computed before tracing, so they enter the graph as constants;
    no branch depends on a tensor value, so the graph is static. dynamo=True uses the torch.export-based
    exporter instead of the TorchScript one (slower to export, same numbers).
    """
    if opset < 17:
        raise ConfigError(f"opset {opset} < 17: LayerNormalization needs opset 17 or newer")
    path = Path(path)
    net = net.eval()
    precision = precision_name(next(net.parameters()).dtype)
    cfg = net.config
    _, T, H, W = layout.latent_shape
    net.rope_tables(T // cfg.patch_temporal, H // cfg.patch_spatial, W // cfg.patch_spatial,
                    next(net.parameters()).device)
    module = DenoiserModule(net, sigma_conditional).eval()
    args = example_denoiser_inputs(layout, batch, text_len, cfg.crossattn_emb_channels)
    t0 = time.perf_counter()
    _onnx_export(module, args, path, DENOISER_INPUTS, ["x0"], opset, dynamo)
    log.info("exported denoiser (batch %d, %s) to %s in %.1f s", batch, precision, path, time.perf_counter() - t0)
    return {"onnx": path.name, "precision": precision, "inputs": _io_spec(DENOISER_INPUTS, args),
            "outputs": _io_spec(["x0"], [args[0]])}


@torch.no_grad()
def export_vae_encoder_onnx(vae: nn.Module, layout: LatentLayout, path: str | Path, *,
                            opset: int = DEFAULT_OPSET, dynamo: bool = False) -> dict:
    """Export the conditioning encoder (`ConditioningEncoderModule`) for batch 1, in the VAE's dtype; returns its
    manifest entry."""
    path = Path(path)
    precision = precision_name(next(vae.parameters()).dtype)
    module = ConditioningEncoderModule(vae.eval(), layout).eval()
    frames = example_camera_frames(module)
    t0 = time.perf_counter()
    _onnx_export(module, (frames,), path, ["video"], ["latent"], opset, dynamo)
    log.info("exported VAE encoder (%d camera frames, %s) to %s in %.1f s", module.input_frames, precision, path,
             time.perf_counter() - t0)
    latent = module(frames)
    return {"onnx": path.name, "precision": precision, "frames": module.frames,
            "prefix_frames": module.prefix_frames, "inputs": _io_spec(["video"], [frames]),
            "outputs": _io_spec(["latent"], [latent])}


def _relative_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


@torch.no_grad()
def denoiser_parity(onnx_path: str | Path, layout: LatentLayout, *, batch: int, text_len: int,
                    references: dict[str, nn.Module], sigma_conditional: float = 0.0, seed: int = 1) -> dict:
    """The exported graph on ONNX Runtime (CPU) vs eager networks, on fresh inputs: max |diff| / max |x0| per name.

    references: e.g. {"same_precision": the DiT at the graph's precision (what the export itself changes),
    "vs_fp32": the float32 DiT (what the precision costs)}.
    """
    from cosmos_policy_core.engines.onnx_engine import OnnxDenoiser

    text_dim = next(iter(references.values())).config.crossattn_emb_channels
    args = example_denoiser_inputs(layout, batch, text_len, text_dim, seed=seed)
    got = OnnxDenoiser(onnx_path, providers=["CPUExecutionProvider"]).predict_x0(*args)
    return {name: _relative_diff(got, DenoiserModule(net.eval(), sigma_conditional)(*args))
            for name, net in references.items()}


@torch.no_grad()
def encoder_parity(onnx_path: str | Path, layout: LatentLayout, *, references: dict[str, nn.Module],
                   seed: int = 1) -> dict:
    """The exported encoder on ONNX Runtime vs each reference VAE's own causal encode of the clip's first frames."""
    from cosmos_policy_core.engines.onnx_engine import OnnxClipEncoder

    out = {}
    for name, vae in references.items():
        module = ConditioningEncoderModule(vae.eval(), layout)
        camera = example_camera_frames(module, seed=seed)
        S = layout.image_size
        clip = torch.cat([-torch.ones(1, 3, module.prefix_frames, S, S), camera], dim=2)
        got = OnnxClipEncoder(onnx_path, frames=module.frames, prefix_frames=module.prefix_frames,
                              providers=["CPUExecutionProvider"])(clip)
        out[name] = _relative_diff(got, vae.encode(clip.to(vae.dtype), chunk_frames=None))
    return out


# --- the export command -----------------------------------------------------------------------------
def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, *, fmt: str = "onnx", batch: int = 1,
                      steps: int = 1, opset: int = DEFAULT_OPSET, dynamo: bool | None = None, validate: bool = True,
                      include_vae: bool = True, precision: str | None = None) -> dict:
    """Export a checkpoint directory's denoiser (+ conditioning VAE encoder); returns and writes the manifest.

    precision: of both graphs (fp32, fp16, bf16); None = fp32 for onnx, bf16 (the reference's) for tensorrt.
    TensorRT builds its engines with exactly these types. dynamo: None = the torch.export-based exporter
    for fp16 / bf16 (the TorchScript exporter's LayerNorm hands float32 to every projection after it, so
    half the weights would be exported as float32) and the faster TorchScript exporter for fp32. `steps` is recorded as the step count the engine
    is meant to serve (1 = the real-time hot path); the graph is one network evaluation, so any step count
    runs on it.
    """
    from cosmos_policy_core.checkpoint import load_checkpoint_dir

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if batch < 1 or steps < 1:
        raise ConfigError(f"batch and steps must be >= 1, got batch={batch}, steps={steps}")
    precision = precision_name(precision) or ("bf16" if fmt == "tensorrt" else "fp32")
    if dynamo is None:
        dynamo = precision != "fp32"
    elif not dynamo and precision != "fp32":
        raise ConfigError(f"precision {precision} needs the dynamo exporter: the TorchScript exporter turns the "
                          "projections after each LayerNorm into float32")
    ckpt = load_checkpoint_dir(checkpoint_dir, load_vae=include_vae)
    if not ckpt.text_embeddings:
        raise CheckpointError(f"{checkpoint_dir} has no text embeddings: the export needs their length")
    if include_vae and ckpt.vae_state is None:
        raise CheckpointError(f"{checkpoint_dir} has no vae.safetensors: export with --no-vae, and the policy "
                              "encodes with the VAE it loads")
    text_len, text_dim = next(iter(ckpt.text_embeddings.values())).shape[-2:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch_dtype(precision)
    net = ckpt.build_dit(dtype).eval()
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "engine_format": fmt, "precision": precision,
        "batch": batch, "steps": steps, "opset": opset, "exporter": "dynamo" if dynamo else "torchscript",
        "checkpoint": {"path": str(Path(checkpoint_dir).resolve()), "fingerprint": checkpoint_fingerprint(checkpoint_dir)},
        "layout": ckpt.layout.to_dict(), "latent_shape": list(ckpt.layout.latent_shape),
        "text_shape": [int(text_len), int(text_dim)], "sigma_conditional": ckpt.diffusion.sigma_conditional,
        "graphs": {}, "parity": {},
    }
    manifest["graphs"]["denoiser"] = export_denoiser_onnx(
        net, ckpt.layout, out / denoiser_file(batch), batch=batch, text_len=int(text_len), opset=opset,
        dynamo=dynamo, sigma_conditional=ckpt.diffusion.sigma_conditional)
    vae = ckpt.build_vae(dtype).eval() if include_vae else None
    if vae is not None:
        manifest["graphs"]["vae_encoder"] = export_vae_encoder_onnx(vae, ckpt.layout, out / ENCODER_FILE, opset=opset,
                                                                    dynamo=dynamo)
    if validate:
        def references(build):
            return {"same_precision": build(dtype), "vs_fp32": build(torch.float32)} if precision != "fp32" \
                else {"same_precision": build(dtype)}

        manifest["parity"]["denoiser"] = denoiser_parity(
            out / denoiser_file(batch), ckpt.layout, batch=batch, text_len=int(text_len),
            references=references(ckpt.build_dit), sigma_conditional=ckpt.diffusion.sigma_conditional)
        if vae is not None:
            manifest["parity"]["vae_encoder"] = encoder_parity(out / ENCODER_FILE, ckpt.layout,
                                                               references=references(ckpt.build_vae))
        for name, p in manifest["parity"].items():
            log.info("ONNX %s vs eager PyTorch (%s): max |diff| %.3g of the output's range", name, precision,
                     p["same_precision"])
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if fmt == "tensorrt":
        manifest = build_tensorrt_engines(out)
    return manifest


def build_tensorrt_engines(export_dir: str | Path) -> dict:
    """Build a TensorRT engine (.plan) for every ONNX graph of an export directory, on this GPU; returns the
    updated manifest. The engines take their precision from the graphs."""
    from cosmos_policy_core.engines.tensorrt_engine import build_engine_from_onnx, tensorrt_version

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    for graph in manifest["graphs"].values():
        onnx_path = export_dir / graph["onnx"]
        graph["tensorrt"] = build_engine_from_onnx(onnx_path, onnx_path.with_suffix(".plan")).name
    manifest["tensorrt_version"] = tensorrt_version()
    manifest["engine_format"] = "tensorrt"
    (export_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def parity_failures(manifest: dict) -> list[str]:
    """The graphs whose parity (same precision) exceeds `PARITY_TOLERANCE`, as messages."""
    tol = PARITY_TOLERANCE[manifest["precision"]]
    return [f"{name} differs from eager PyTorch ({manifest['precision']}) by {p['same_precision']:.3g} of its range "
            f"(> {tol})" for name, p in manifest.get("parity", {}).items() if p["same_precision"] > tol]


# --- loading ----------------------------------------------------------------------------------------
def read_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{export_dir} has no {MANIFEST}; write it with `cosmos-aloha export`") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or manifest.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"{path} is not a version-{MANIFEST_VERSION} export manifest (written by an older "
                              "cosmos-aloha or another tool); export the checkpoint again with `cosmos-aloha export`")
    return manifest


def _check_identity(manifest: dict, path: Path, checkpoint_dir: str | Path) -> None:
    recorded = manifest["checkpoint"]["fingerprint"]
    current = checkpoint_fingerprint(checkpoint_dir)
    differ = sorted(name for name in recorded if current.get(name) != recorded[name])
    if differ:
        raise CheckpointError(
            f"{path} was exported from {manifest['checkpoint']['path']}, whose {', '.join(differ)} differ(s) from "
            f"{Path(checkpoint_dir).resolve()}'s: the graphs hold other weights. Export this checkpoint with "
            f"`cosmos-aloha export --checkpoint {checkpoint_dir} --out {path.parent}`")


def _check_shapes(manifest: dict, path: Path, ckpt) -> None:
    """The graphs' recorded input shapes against what this checkpoint's layout and text embeddings need."""
    from cosmos_policy_core.engines.encoder import conditioning_pixel_frames, constant_prefix_frames

    den = manifest["graphs"]["denoiser"]["inputs"]
    need = list(ckpt.layout.latent_shape)
    if den["x_sigma"]["shape"][1:] != need:
        raise ShapeError(f"{path}: {manifest['graphs']['denoiser']['onnx']} takes latents of shape (B, "
                         f"{', '.join(map(str, den['x_sigma']['shape'][1:]))}); this checkpoint's layout needs (B, "
                         f"{', '.join(map(str, need))}): export it again for this checkpoint")
    if ckpt.text_embeddings:
        text = list(next(iter(ckpt.text_embeddings.values())).shape[-2:])
        if den["crossattn"]["shape"][1:] != text:
            raise ShapeError(f"{path}: the denoiser takes text embeddings of shape (B, "
                             f"{', '.join(map(str, den['crossattn']['shape'][1:]))}); this checkpoint's are (B, "
                             f"{', '.join(map(str, text))})")
    enc = manifest["graphs"].get("vae_encoder")
    if enc is not None:
        S = ckpt.layout.image_size
        need = [1, 3, conditioning_pixel_frames(ckpt.layout) - constant_prefix_frames(ckpt.layout), S, S]
        if enc["inputs"]["video"]["shape"] != need:
            raise ShapeError(f"{path}: {enc['onnx']} takes camera frames of shape {tuple(enc['inputs']['video']['shape'])}; "
                             f"this checkpoint's layout needs {tuple(need)}: export it again for this checkpoint")


def load_exported(export_dir: str | Path, *, engine: str = "onnx", device="cpu", precision: str | None = None,
                  checkpoint=None, checkpoint_dir: str | Path | None = None, providers: list[str] | None = None):
    """(Denoiser, conditioning encoder or None) from an export directory.

    Checks, each with an error naming the file and what it expected: the manifest; `precision` (if given)
    against the exported one; the checkpoint's weights (`checkpoint_dir`) against the recorded fingerprint;
    the graphs' shapes against the checkpoint's layout (`checkpoint`, a CosmosCheckpoint); every file.
    """
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    manifest = read_manifest(export_dir)
    exported = manifest["precision"]
    if precision is not None and precision_name(precision) != exported:
        raise CheckpointError(f"{path}: the graphs were exported at {exported}, {precision_name(precision)} was asked "
                              f"for; ask for {exported} (or auto), or export again with --precision "
                              f"{precision_name(precision)}")
    if checkpoint_dir is not None:
        _check_identity(manifest, path, checkpoint_dir)
    if checkpoint is not None:
        _check_shapes(manifest, path, checkpoint)
    graphs = manifest["graphs"]
    enc = graphs.get("vae_encoder")
    if engine == "onnx":
        from cosmos_policy_core.engines.onnx_engine import OnnxClipEncoder, OnnxDenoiser

        denoiser = OnnxDenoiser(export_dir / graphs["denoiser"]["onnx"], providers,
                                expect=graphs["denoiser"], precision=exported)
        encoder = None if enc is None else OnnxClipEncoder(export_dir / enc["onnx"], frames=enc["frames"],
                                                           prefix_frames=enc["prefix_frames"], providers=providers,
                                                           expect=enc, precision=exported)
        return denoiser, encoder
    if engine == "tensorrt":
        from cosmos_policy_core.engines.tensorrt_engine import TensorRTClipEncoder, TensorRTDenoiser, check_version

        missing = [name for name, g in graphs.items() if not g.get("tensorrt")]
        if missing:
            raise CheckpointError(f"{path} lists no TensorRT engine for {', '.join(missing)}; export with "
                                  f"`cosmos-aloha export --format tensorrt --out {export_dir}` on this machine")
        check_version(manifest.get("tensorrt_version"), path)
        denoiser = TensorRTDenoiser.from_engine_file(export_dir / graphs["denoiser"]["tensorrt"], device=device,
                                                     expect=graphs["denoiser"])
        encoder = None if enc is None else TensorRTClipEncoder.from_engine_file(
            export_dir / enc["tensorrt"], frames=enc["frames"], prefix_frames=enc["prefix_frames"], device=device,
            expect=enc)
        return denoiser, encoder
    raise ConfigError(f"unknown exported engine {engine!r}; choose one of {FORMATS}")
