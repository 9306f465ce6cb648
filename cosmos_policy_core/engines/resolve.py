"""Engine resolution: (engine name, device, dtype) -> the denoiser and VAE encoder that run a checkpoint.

The one place that maps these names; `CosmosPolicy.from_checkpoint`, the ROS nodes, `act`, `sim eval` and the benchmarks all go through it.
Imports torch only when called, so command-line parsers can offer ENGINES and PRECISION_NAMES cheaply.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cosmos_policy_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# torch: eager PyTorch. compile: torch.compile of the DiT and the VAE encoder (CUDA graphs on a GPU).
# onnx / tensorrt: the graphs `cosmos-aloha export` wrote (ONNX Runtime, or TensorRT engines built from them).
ENGINES = ("torch", "compile", "onnx", "tensorrt")
EXPORTED_ENGINES = ("onnx", "tensorrt")
PRECISION_NAMES = ("fp32", "fp16", "bf16")
DEFAULT_EXPORT_SUBDIR = "export"   # <checkpoint>/export: where `export` writes unless told otherwise
# On a GPU the CUDA graphs of "reduce-overhead" remove the per-kernel launch cost of the 1-step hot path
# (2B DiT forward 30.2 -> 19.2 ms on an H200, benchmarks/RESULTS.md); a CPU has no graphs to capture.
COMPILE_MODE_GPU = "reduce-overhead"
COMPILE_MODE_CPU = "default"


def torch_dtype(precision: str) -> "torch.dtype":
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """"auto" -> cuda when available, else cpu; an explicit cuda device must exist."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {device!r} is not a torch device: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA device: use device 'cpu' "
                          "(or 'auto')")
    return dev


def precision_name(dtype: "str | torch.dtype | None") -> str | None:
    """'fp32' / 'fp16' / 'bf16' of a torch dtype or a precision name; None stays None ('auto' too)."""
    if dtype is None or dtype == "auto":
        return None
    aliases = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
    name = aliases.get(str(dtype).replace("torch.", ""), str(dtype))
    if name not in PRECISION_NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {PRECISION_NAMES} (or auto)")
    return name


@dataclass(frozen=True)
class EngineSpec:
    """What runs a checkpoint, resolved: engine, device, precision, and where its exported graphs live.

    precision: of the DiT (and the VAE encoder) for torch / compile; for onnx / tensorrt the precision the
    export directory must hold (None: whatever it holds, read from its manifest).
    """

    engine: str
    device: "torch.device"
    precision: str | None
    compile_mode: str | None = None
    export_dir: Path | None = None

    @property
    def dtype(self) -> "torch.dtype":
        """The torch dtype of the networks run in-process (the DiT of torch / compile)."""
        return torch_dtype(self.precision or "fp32")

    @property
    def vae_dtype(self) -> "torch.dtype":
        """The in-process VAE (decoder; encoder for torch): fp32 on a CPU, bf16 on a GPU as the reference."""
        cpu_or_fp32 = self.device.type != "cuda" or self.precision == "fp32"
        return torch_dtype("fp32" if cpu_or_fp32 else "bf16")

    def describe(self) -> str:
        parts = [self.engine, str(self.device), self.precision or "as exported"]
        if self.compile_mode:
            parts.append(f"mode {self.compile_mode}")
        if self.export_dir is not None:
            parts.append(str(self.export_dir))
        return ", ".join(parts)


def resolve_engine(engine: str = "torch", *, device: "str | torch.device" = "auto", dtype=None,
                   checkpoint: str | Path | None = None, export_dir: str | Path | None = None,
                   compile_mode: str | None = None) -> EngineSpec:
    """An `EngineSpec` from user-level names (parameters, flags), checked; errors say what to change.

    dtype: None / "auto" = bf16 on a GPU (as the reference serves) and fp32 on a CPU for torch / compile,
    the exported precision for onnx / tensorrt. export_dir: onnx / tensorrt only; default
    <checkpoint>/export. compile_mode: a torch.compile mode for engine "compile" (default: reduce-overhead
    on a GPU, default on a CPU).
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    dev = resolve_device(device)
    precision = precision_name(dtype)
    if compile_mode is not None and engine != "compile":
        raise ConfigError(f"compile_mode {compile_mode!r} applies to engine 'compile', not {engine!r}")
    if engine in ("torch", "compile"):
        if export_dir is not None:
            raise ConfigError(f"export_dir applies to the exported engines {EXPORTED_ENGINES}, not {engine!r}")
        precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
        if engine == "compile":
            compile_mode = compile_mode or (COMPILE_MODE_GPU if dev.type == "cuda" else COMPILE_MODE_CPU)
        return EngineSpec(engine, dev, precision, compile_mode)
    if engine == "tensorrt" and dev.type != "cuda":
        raise ConfigError(f"engine 'tensorrt' runs on a CUDA device, got device {dev}; use engine 'onnx' on a CPU")
    if export_dir is None:
        if checkpoint is None:
            raise ConfigError(f"engine {engine!r} needs the directory written by `cosmos-aloha export` (export_dir)")
        export_dir = Path(checkpoint) / DEFAULT_EXPORT_SUBDIR
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        ckpt = checkpoint if checkpoint is not None else "CHECKPOINT"
        raise ConfigError(f"engine {engine!r} needs the export directory {export_dir}, which does not exist; write it "
                          f"with `cosmos-aloha export --checkpoint {ckpt} --format {engine} --out {export_dir}`")
    return EngineSpec(engine, dev, precision, None, export_dir)


def load_engines(spec: EngineSpec, ckpt, *, checkpoint_dir: str | Path | None = None, name: str = "policy"):
    """(Denoiser, fast-path VAE encoder or None) of a loaded `CosmosCheckpoint` under `spec`.

    None as encoder: the policy encodes with its own (eager) VAE. The exported engines check that the
    export directory was written from this checkpoint at the precision asked for.
    """
    if spec.engine in ("torch", "compile"):
        from cosmos_policy_core.engines.torch_engine import TorchDenoiser

        net = ckpt.build_dit(spec.dtype).to(spec.device)
        denoiser = TorchDenoiser(net, compile=spec.compile_mode, sigma_conditional=ckpt.diffusion.sigma_conditional,
                                 name=name)
        encoder = None
        if spec.engine == "compile" and ckpt.vae_state is not None:
            from cosmos_policy_core.engines.encoder import TorchClipEncoder

            vae = ckpt.build_vae(spec.vae_dtype).to(spec.device)
            encoder = TorchClipEncoder(vae, ckpt.layout, compile=spec.compile_mode)
        log.info("%s engine: %s", name, spec.describe())
        return denoiser, encoder
    from cosmos_policy_core.engines.export import load_exported

    denoiser, encoder = load_exported(spec.export_dir, engine=spec.engine, device=spec.device,
                                      precision=spec.precision, checkpoint=ckpt, checkpoint_dir=checkpoint_dir)
    log.info("%s engine: %s", name, spec.describe())
    return denoiser, encoder
