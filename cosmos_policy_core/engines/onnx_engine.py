"""ONNX Runtime backends: the exported fixed-shape denoiser graph and the conditioning VAE encoder graph.

The CPU twin of the TensorRT engines: the same exported graphs, with their fp32 / fp16 / bf16 types, checked against eager PyTorch.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.engines.base import Denoiser, expand_condition
from cosmos_policy_core.engines.encoder import ClipEncoder
from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError

log = logging.getLogger(__name__)

DENOISER_INPUTS = ("x_sigma", "sigma", "gt", "mask", "crossattn")
_FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16"}   # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16
_PROTOBUF_LIMIT = 2**31 - 1


def graph_precision(model) -> str:
    """fp32 / fp16 / bf16: the type most of a graph's matrix-multiply and convolution weights have.

    Only those weights count: constant tables the graph also holds (RoPE frequencies, the preconditioning)
    stay float32 whatever the network's precision.
    """
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1}
    counts: dict[str, int] = {}
    for t in model.graph.initializer:
        name = _FLOAT_TYPES.get(t.data_type)
        if name is not None and t.name in weights:
            counts[name] = counts.get(name, 0) + (int(np.prod(t.dims)) if len(t.dims) else 1)
    return max(counts, key=counts.get) if counts else "fp32"


def _session(path: Path, providers: list[str] | None, precision: str | None = None):
    """An InferenceSession; a bf16 graph on CPU-only providers runs through `bf16_on_cpu.emulate_bf16`."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dev dependency
        raise ConfigError("the onnx engine needs onnx and onnxruntime: pip install 'cosmos-aloha[onnx]'") from e
    if not path.is_file():
        raise CheckpointError(f"ONNX graph {path} does not exist; export it with `cosmos-aloha export --out "
                              f"{path.parent}`")
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
    chosen = chosen or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The process's thread budget is torch's (torch.set_num_threads), for every engine alike.
    options.intra_op_num_threads = torch.get_num_threads()
    model = onnx.load(str(path), load_external_data=False)   # types and shapes only: a 2B graph's weights are GBs
    found = graph_precision(model)
    if precision is not None and found != precision:
        raise CheckpointError(f"{path} holds {found} weights, its export manifest says {precision}: the directory "
                              "mixes two exports; export the checkpoint again into an empty directory")
    if chosen == ["CPUExecutionProvider"]:
        from cosmos_policy_core.engines.bf16_on_cpu import emulate_bf16, has_bf16

        if has_bf16(model):
            # ONNX Runtime's CPU kernels have almost no bfloat16 implementations.
            log.info("%s: bf16 graph on the CPU provider, running float32 kernels with bf16 rounding", path.name)
            emulated = emulate_bf16(onnx.load(str(path)))
            if emulated.ByteSize() < _PROTOBUF_LIMIT:
                return ort.InferenceSession(emulated.SerializeToString(), sess_options=options, providers=chosen)
            # A 2B graph's float32 weights exceed protobuf's 2 GB: written beside a temporary graph file instead.
            tmp = Path(tempfile.mkdtemp(prefix="cosmos_bf16_"))
            atexit.register(shutil.rmtree, tmp, True)
            onnx.save_model(emulated, str(tmp / path.name), save_as_external_data=True, location="weights.bin")
            return ort.InferenceSession(str(tmp / path.name), sess_options=options, providers=chosen)
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


def _check_io(session, path: Path, expect: dict | None, inputs) -> dict[str, tuple]:
    """Input name -> shape of a session, checked against the manifest entry `expect` (the shapes recorded at export)."""
    found = {i.name: tuple(i.shape) for i in session.get_inputs()}
    missing = [n for n in inputs if n not in found]
    if missing:
        raise CheckpointError(f"{path} lacks inputs {missing}; it is not a graph exported by `cosmos-aloha export`")
    if expect is not None:
        for name, spec in expect["inputs"].items():
            if list(found.get(name, ())) != spec["shape"]:
                raise ShapeError(f"{path}: input {name} has shape {found.get(name)}, its export manifest says "
                                 f"{tuple(spec['shape'])}: the directory mixes two exports; export again")
    return found


def _padded_chunks(B: int, batch: int):
    """(start, stop) pieces of at most `batch` rows; the last one is padded up to `batch` by the caller."""
    return [(s, min(B, s + batch)) for s in range(0, B, batch)]


def _pad_rows(x: np.ndarray, batch: int) -> np.ndarray:
    if x.shape[0] == batch:
        return x
    reps = np.repeat(x[-1:], batch - x.shape[0], axis=0)
    return np.concatenate([x, reps], axis=0)


class OnnxDenoiser(Denoiser):
    """Runs `denoiser_b{N}.onnx`: fixed batch N, so other batch sizes are split / padded to N."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, name: str = "onnx", *,
                 expect: dict | None = None, precision: str | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers, precision)
        self.input_shapes = _check_io(self.session, self.path, expect, DENOISER_INPUTS)
        self.batch = int(self.input_shapes["x_sigma"][0])
        self.name = name
        self.device = torch.device("cpu")
        log.info("ONNX denoiser %s (batch %d) on %s", self.path.name, self.batch, self.session.get_providers())

    def predict_x0(self, x_sigma_B_C_T_H_W, sigma_B, gt_B_C_T_H_W, mask_B_1_T_H_W, crossattn_B_L_D):
        B = x_sigma_B_C_T_H_W.shape[0]
        if tuple(x_sigma_B_C_T_H_W.shape[1:]) != self.input_shapes["x_sigma"][1:]:
            raise ShapeError(f"latent shape {tuple(x_sigma_B_C_T_H_W.shape[1:])} != exported "
                             f"{self.input_shapes['x_sigma'][1:]}; re-export for this layout")
        if tuple(crossattn_B_L_D.shape[1:]) != self.input_shapes["crossattn"][1:]:
            raise ShapeError(f"text embedding shape {tuple(crossattn_B_L_D.shape[1:])} != exported "
                             f"{self.input_shapes['crossattn'][1:]}")
        full = {
            "x_sigma": x_sigma_B_C_T_H_W,
            "sigma": sigma_B.reshape(B),
            "gt": expand_condition(gt_B_C_T_H_W, B, "gt latent"),
            "mask": expand_condition(mask_B_1_T_H_W, B, "condition mask"),
            "crossattn": expand_condition(crossattn_B_L_D, B, "text embedding"),
        }
        arrays = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in full.items()}
        out = []
        for start, stop in _padded_chunks(B, self.batch):
            feed = {k: _pad_rows(v[start:stop], self.batch) for k, v in arrays.items()}
            out.append(self.session.run(["x0"], feed)[0][: stop - start])
        return torch.from_numpy(np.concatenate(out)).to(x_sigma_B_C_T_H_W.device)


class OnnxClipEncoder(ClipEncoder):
    """Runs `vae_encoder.onnx` (a `ConditioningEncoderModule`): the clip's camera frames -> conditioning latents."""

    def __init__(self, path: str | Path, *, frames: int, prefix_frames: int, providers: list[str] | None = None,
                 expect: dict | None = None, precision: str | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers, precision)
        shape = _check_io(self.session, self.path, expect, ["video"])["video"]
        self.frames, self.prefix_frames = int(frames), int(prefix_frames)
        if shape[2] != self.frames - self.prefix_frames:
            raise ShapeError(f"{self.path} takes {shape[2]} camera frames, expected frames {self.frames} - prefix "
                             f"{self.prefix_frames}; export the checkpoint again")
        self.image_size = int(shape[-1])
        self.name = "onnx"

    def __call__(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        x = self.check_clip(video_B_3_T_H_W, self.image_size).detach().to("cpu", torch.float32).numpy()
        out = [self.session.run(["latent"], {"video": np.ascontiguousarray(x[b:b + 1])})[0] for b in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(out)).to(video_B_3_T_H_W.device)
