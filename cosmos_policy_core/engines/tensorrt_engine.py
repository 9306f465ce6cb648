"""TensorRT backends (denoiser and conditioning encoder), for robot PCs with an NVIDIA GPU and TensorRT 10.x or 11.x.

Engines are built from the exported ONNX graphs as strongly typed networks: every precision comes from the graph's own types
(bf16 / fp16 / fp32, chosen at export), never from builder flags (TensorRT 11 removed BuilderFlag.FP16 / BF16).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from cosmos_policy_core.engines.base import Denoiser, expand_condition
from cosmos_policy_core.engines.encoder import ClipEncoder
from cosmos_policy_core.engines.onnx_engine import DENOISER_INPUTS
from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError

log = logging.getLogger(__name__)

SUPPORTED_MAJOR_VERSIONS = (10, 11)   # the `trt` extra pins the same range


def import_tensorrt():
    """The tensorrt module, or ConfigError explaining where it comes from."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ConfigError(
            "TensorRT is not installed. Install it on the GPU machine with `pip install 'cosmos-aloha[trt]'` (TensorRT "
            f"{'/'.join(f'{v}.x' for v in SUPPORTED_MAJOR_VERSIONS)}, needs NVIDIA's package index) or use the "
            "docker/ robot-PC image; use engine 'compile' or 'onnx' where TensorRT is unavailable."
        ) from e
    return trt


def tensorrt_version() -> str:
    return str(import_tensorrt().__version__)


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return -1


def check_version(built_with: str | None, manifest_path: Path) -> None:
    """A serialized engine runs only on the TensorRT version that built it: say so before deserializing."""
    here = tensorrt_version()
    if built_with is not None and built_with != here:
        raise CheckpointError(f"{manifest_path}: the TensorRT engines were built with TensorRT {built_with}, this "
                              f"machine has {here}; build them here with `cosmos-aloha export --format tensorrt "
                              f"--out {manifest_path.parent}`")


def build_engine_from_onnx(onnx_path: str | Path, plan_path: str | Path, *, workspace_gb: int = 8) -> Path:
    """Parse an exported ONNX graph into a strongly typed network and serialize its engine (.plan) for this GPU.

    The engine computes in the graph's types: a bf16 export gives a bf16 engine, fp16 an fp16 one.
    """
    trt = import_tensorrt()
    major = _major(trt.__version__)
    if major < SUPPORTED_MAJOR_VERSIONS[0]:
        raise ConfigError(f"TensorRT {trt.__version__} is too old: install TensorRT "
                          f"{'/'.join(f'{v}.x' for v in SUPPORTED_MAJOR_VERSIONS)} (`pip install 'cosmos-aloha[trt]'`)")
    if major > SUPPORTED_MAJOR_VERSIONS[-1]:
        log.warning("TensorRT %s is newer than the versions this builder was written for (%s.x)", trt.__version__,
                    "/".join(map(str, SUPPORTED_MAJOR_VERSIONS)))
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise CheckpointError(f"ONNX graph {onnx_path} does not exist; export it with `cosmos-aloha export`")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Accepted and required on 10.x; 11.x networks are always strongly typed and ignore it.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gb << 30)
    log.info("building a TensorRT %s engine from %s; this takes minutes for the 2B model", trt.__version__,
             onnx_path.name)
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


def _require_cuda(device) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(f"TensorRT runs on a CUDA device, got {device} (cuda available: {torch.cuda.is_available()})")
    return device


class TensorRTEngine:
    """One deserialized engine with fixed-shape I/O: `run({input: tensor}) -> {output: tensor}` on one CUDA stream.

    Output buffers are allocated once and reused by the next call.
    """

    def __init__(self, path: str | Path, device="cuda", expect: dict | None = None) -> None:
        trt = import_tensorrt()
        self.device = _require_cuda(device)
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"TensorRT engine {self.path} does not exist; build it with `cosmos-aloha export "
                                  f"--format tensorrt --out {self.path.parent}` on this machine")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"{self.path} was built for another GPU or TensorRT version ({trt.__version__} here); "
                                  "rebuild it here with `cosmos-aloha export --format tensorrt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in names}
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        if expect is not None:
            for kind in ("inputs", "outputs"):
                for name, spec in expect[kind].items():
                    if list(self.shapes.get(name, ())) != spec["shape"]:
                        raise ShapeError(f"{self.path}: tensor {name} has shape {self.shapes.get(name)}, the export "
                                         f"manifest says {tuple(spec['shape'])}; build the engines again")
        self._out = {n: torch.empty(self.shapes[n], dtype=self.dtypes[n], device=self.device) for n in self.outputs}
        for n, t in self._out.items():
            self.context.set_tensor_address(n, t.data_ptr())

    def run(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = []
        for n in self.inputs:
            t = feed[n].to(self.device, self.dtypes[n]).contiguous()
            if tuple(t.shape) != self.shapes[n]:
                raise ShapeError(f"{self.path.name}: input {n} expects {self.shapes[n]}, got {tuple(t.shape)}")
            keep.append(t)   # alive until the stream has run
            self.context.set_tensor_address(n, t.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        stream.synchronize()
        return self._out


class TensorRTDenoiser(Denoiser):
    """Fixed-batch TensorRT denoiser; other batch sizes are split / padded to the engine's batch."""

    def __init__(self, engine: TensorRTEngine) -> None:
        missing = [n for n in (*DENOISER_INPUTS, "x0") if n not in engine.shapes]
        if missing:
            raise CheckpointError(f"{engine.path} lacks tensors {missing}; it is not a cosmos-aloha denoiser engine")
        self.engine = engine
        self.batch = int(engine.shapes["x_sigma"][0])
        self.device = engine.device
        self.name = "tensorrt"
        log.info("TensorRT denoiser %s (batch %d) on %s", engine.path.name, self.batch, self.device)

    @classmethod
    def from_engine_file(cls, path: str | Path, device="cuda", expect: dict | None = None) -> "TensorRTDenoiser":
        return cls(TensorRTEngine(path, device, expect))

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
            out.append(self.engine.run(feed)["x0"][: stop - start].float().clone())
        return torch.cat(out).to(x_sigma_B_C_T_H_W.device)


class TensorRTClipEncoder(ClipEncoder):
    """The conditioning encoder engine (batch 1 per call): the clip's camera frames -> conditioning latents."""

    def __init__(self, engine: TensorRTEngine, *, frames: int, prefix_frames: int) -> None:
        if "video" not in engine.shapes or "latent" not in engine.shapes:
            raise CheckpointError(f"{engine.path} lacks tensors video / latent; it is not a cosmos-aloha VAE encoder")
        self.engine = engine
        self.frames, self.prefix_frames = int(frames), int(prefix_frames)
        self.image_size = int(engine.shapes["video"][-1])
        self.device = engine.device
        self.name = "tensorrt"

    @classmethod
    def from_engine_file(cls, path: str | Path, *, frames: int, prefix_frames: int, device="cuda",
                         expect: dict | None = None) -> "TensorRTClipEncoder":
        return cls(TensorRTEngine(path, device, expect), frames=frames, prefix_frames=prefix_frames)

    @torch.no_grad()
    def __call__(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        frames = self.check_clip(video_B_3_T_H_W, self.image_size)
        out = [self.engine.run({"video": frames[b:b + 1]})["latent"].float().clone() for b in range(frames.shape[0])]
        return torch.cat(out).to(video_B_3_T_H_W.device)
