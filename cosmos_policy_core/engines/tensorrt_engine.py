"""TensorRT backend of the `Denoiser` interface, for robot PCs with an NVIDIA GPU and TensorRT installed.

Two routes: a serialized engine built from the exported ONNX graph (tensorrt Python API), or torch-tensorrt compiling a torch.export program.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cosmos_policy_core.engines.base import Denoiser, DenoiserModule, expand_condition
from cosmos_policy_core.engines.onnx_engine import DENOISER_INPUTS
from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")


def import_tensorrt():
    """The tensorrt module, or ConfigError explaining where it comes from."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ConfigError(
            "TensorRT is not installed. It ships with NVIDIA's CUDA stack (the docker/ robot-PC image installs it); "
            "PyPI's tensorrt wheels download the real package from pypi.nvidia.com. Use engine='onnx' or "
            "engine='torch' (with compile) where TensorRT is unavailable."
        ) from e
    return trt


def import_torch_tensorrt():
    try:
        import torch_tensorrt
    except ImportError as e:
        raise ConfigError("torch-tensorrt is not installed: pip install torch-tensorrt (matching your torch) "
                          "on a machine with TensorRT and CUDA") from e
    return torch_tensorrt


def _require_cuda(device) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(f"TensorRT runs on a CUDA device, got {device} (cuda available: {torch.cuda.is_available()})")
    return device


def build_engine_from_onnx(onnx_path: str | Path, plan_path: str | Path, *, precision: str = "fp16",
                           workspace_gb: int = 8) -> Path:
    """Parse the exported ONNX graph and serialize a TensorRT engine (.plan) for this GPU and TensorRT version."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    trt = import_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:  # TensorRT 8.x needs it; 10.x networks are always explicit-batch
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gb << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    log.info("building TensorRT engine from %s (%s); this takes minutes for the 2B model", onnx_path.name, precision)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckpointError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


class TensorRTDenoiser(Denoiser):
    """Fixed-batch TensorRT denoiser; other batch sizes are split / padded to the engine's batch."""

    def __init__(self, runner, batch: int, device: torch.device, name: str) -> None:
        self._run = runner
        self.batch = batch
        self.device = device
        self.name = name

    # --- route 1: serialized engine ------------------------------------------------------------
    @classmethod
    def from_engine_file(cls, path: str | Path, device="cuda") -> "TensorRTDenoiser":
        trt = import_tensorrt()
        device = _require_cuda(device)
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"TensorRT engine {path} does not exist; build it with `cosmos-aloha export "
                                  f"--format tensorrt` on this machine")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise CheckpointError(f"{path} was built for another GPU or TensorRT version; rebuild it here")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shapes = {n: tuple(engine.get_tensor_shape(n)) for n in names}
        dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        missing = [n for n in (*DENOISER_INPUTS, "x0") if n not in names]
        if missing:
            raise CheckpointError(f"{path} lacks tensors {missing}; it is not a cosmos-aloha denoiser engine")
        batch = int(shapes["x_sigma"][0])

        def run(feed: dict[str, torch.Tensor]) -> torch.Tensor:
            out = torch.empty(shapes["x0"], dtype=dtypes["x0"], device=device)
            keep = {}
            for n in DENOISER_INPUTS:
                t = feed[n].to(device, dtypes[n]).contiguous()
                if tuple(t.shape) != shapes[n]:
                    raise ShapeError(f"engine input {n} expects {shapes[n]}, got {tuple(t.shape)}")
                keep[n] = t
                context.set_tensor_address(n, t.data_ptr())
            context.set_tensor_address("x0", out.data_ptr())
            stream = torch.cuda.current_stream(device)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
            return out.float()

        log.info("TensorRT engine %s (batch %d) on %s", path.name, batch, device)
        return cls(run, batch, device, "tensorrt")

    # --- route 2: torch-tensorrt ------------------------------------------------------------------
    @classmethod
    def from_torch(cls, net: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, precision: str = "bf16",
                   device="cuda", sigma_conditional: float = 0.0) -> "TensorRTDenoiser":
        """torch.export the denoiser module at the example inputs' shapes and compile it with torch-tensorrt."""
        torch_tensorrt = import_torch_tensorrt()
        device = _require_cuda(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
        module = DenoiserModule(net.to(device).eval(), sigma_conditional).eval()
        inputs = tuple(t.to(device, torch.float32).contiguous() for t in example_inputs)
        program = torch.export.export(module, inputs)
        enabled = {"fp32": {torch.float32}, "fp16": {torch.float16}, "bf16": {torch.bfloat16}}[precision]
        compiled = torch_tensorrt.dynamo.compile(program, inputs=list(inputs), enabled_precisions=enabled)
        batch = int(inputs[0].shape[0])

        @torch.no_grad()
        def run(feed: dict[str, torch.Tensor]) -> torch.Tensor:
            return compiled(*(feed[n].to(device, torch.float32).contiguous() for n in DENOISER_INPUTS)).float()

        return cls(run, batch, device, "torch-tensorrt")

    @torch.no_grad()
    def predict_x0(self, x_sigma_B_C_T_H_W, sigma_B, gt_B_C_T_H_W, mask_B_1_T_H_W, crossattn_B_L_D):
        B = x_sigma_B_C_T_H_W.shape[0]
        full = {
            "x_sigma": x_sigma_B_C_T_H_W, "sigma": sigma_B.reshape(B),
            "gt": expand_condition(gt_B_C_T_H_W, B, "gt latent"),
            "mask": expand_condition(mask_B_1_T_H_W, B, "condition mask"),
            "crossattn": expand_condition(crossattn_B_L_D, B, "text embedding"),
        }
        out = []
        for start in range(0, B, self.batch):
            stop = min(B, start + self.batch)
            feed = {}
            for k, v in full.items():
                part = v[start:stop]
                if part.shape[0] < self.batch:  # pad with copies of the last row; their outputs are dropped
                    part = torch.cat([part, part[-1:].expand(self.batch - part.shape[0], *part.shape[1:])])
                feed[k] = part
            out.append(self._run(feed)[: stop - start])
        return torch.cat(out).to(x_sigma_B_C_T_H_W.device)
