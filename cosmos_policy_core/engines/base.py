"""The one interface every inference backend implements: x0 prediction of the conditioned DiT at noise level σ.

Also the torch module (`DenoiserModule`) that fixes that computation as one graph: what torch runs, ONNX exports and TensorRT builds.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from cosmos_policy_core.diffusion import X0Fn, denoise
from cosmos_policy_core.errors import ShapeError


class DenoiserModule(nn.Module):
    """Preconditioning + frame-replacement conditioning + the raw DiT, as one module.

    forward(x_sigma (B, C, T, H, W), sigma (B,), gt (B, C, T, H, W), mask (B, 1, T, H, W),
    crossattn (B, L, D)) -> x0 (B, C, T, H, W). Every batch must be full (no broadcasting) so the
    exported graph has one fixed shape; the per-frame timesteps (AdaLN per latent frame) come
    from the mask inside the graph, and nothing branches on tensor values.
    """

    def __init__(self, net: nn.Module, sigma_conditional: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.sigma_conditional = float(sigma_conditional)

    def forward(self, x_sigma: torch.Tensor, sigma: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                crossattn: torch.Tensor) -> torch.Tensor:
        return denoise(self.net, x_sigma, sigma, gt, mask, crossattn, None, sigma_conditional=self.sigma_conditional)


def expand_condition(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Broadcast a batch-1 conditioning tensor (one observation shared by N samples) to `batch` rows."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ShapeError(f"{name} has batch {x.shape[0]}, the noisy latent has batch {batch}")


class Denoiser(abc.ABC):
    """x0 = D(x_σ, σ | gt, mask, text): the sampler's only view of the network, whatever runs it.

    Inputs are float32 on `device`; conditioning tensors may have batch 1 and are then shared by
    every row of x_σ. The result is float32 and already holds the clean gt on mask = 1 frames.
    """

    name: str = "denoiser"
    device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def predict_x0(self, x_sigma_B_C_T_H_W: torch.Tensor, sigma_B: torch.Tensor, gt_B_C_T_H_W: torch.Tensor,
                   mask_B_1_T_H_W: torch.Tensor, crossattn_B_L_D: torch.Tensor) -> torch.Tensor:
        """x0 prediction, (B, C, T, H, W) float32."""

    def bind(self, gt_B_C_T_H_W: torch.Tensor, mask_B_1_T_H_W: torch.Tensor, crossattn_B_L_D: torch.Tensor) -> X0Fn:
        """An `X0Fn` for `diffusion.sample` with this conditioning."""

        def x0_fn(x_sigma_B_C_T_H_W: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
            return self.predict_x0(x_sigma_B_C_T_H_W, sigma_B, gt_B_C_T_H_W, mask_B_1_T_H_W, crossattn_B_L_D)

        return x0_fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device})"
