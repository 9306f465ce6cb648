"""ONNX Runtime backends: the exported fixed-shape denoiser graph and the VAE encoder graph.

The CPU twin of the TensorRT engine: the same exported graph, checked against eager PyTorch in the tests.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cosmos_policy_core.engines.base import Denoiser, expand_condition
from cosmos_policy_core.errors import CheckpointError, ConfigError, ShapeError

log = logging.getLogger(__name__)

DENOISER_INPUTS = ("x_sigma", "sigma", "gt", "mask", "crossattn")


def _session(path: Path, providers: list[str] | None):
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dev dependency
        raise ConfigError("the onnx engine needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from e
    if not path.is_file():
        raise CheckpointError(f"ONNX graph {path} does not exist; run `cosmos-aloha export --format onnx` first")
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen or ["CPUExecutionProvider"])


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

    def __init__(self, path: str | Path, providers: list[str] | None = None, name: str = "onnx") -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in DENOISER_INPUTS if n not in inputs]
        if missing:
            raise CheckpointError(f"{self.path} lacks inputs {missing}; it is not a denoiser exported by cosmos-aloha")
        self.input_shapes = {n: tuple(inputs[n].shape) for n in DENOISER_INPUTS}
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


class OnnxVAEEncoder:
    """Runs `vae_encoder.onnx`: [-1, 1] clip (B, 3, T, H, W) -> normalized latent, batch 1 per call."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers)
        self.input_shape = tuple(self.session.get_inputs()[0].shape)

    def __call__(self, video_B_3_T_H_W: torch.Tensor) -> torch.Tensor:
        if tuple(video_B_3_T_H_W.shape[1:]) != self.input_shape[1:]:
            raise ShapeError(f"clip shape {tuple(video_B_3_T_H_W.shape[1:])} != exported {self.input_shape[1:]}")
        x = video_B_3_T_H_W.detach().to("cpu", torch.float32).numpy()
        out = [self.session.run(["latent"], {"video": x[b:b + 1]})[0] for b in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(out))
