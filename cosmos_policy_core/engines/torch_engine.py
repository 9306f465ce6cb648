"""PyTorch backend of the `Denoiser` interface: eager, or `torch.compile` (optionally with CUDA graphs).

The reference runs the DiT in bf16; pass `dtype=torch.bfloat16` for the same, float32 is the CPU default.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from cosmos_policy_core.engines.base import Denoiser, DenoiserModule, expand_condition
from cosmos_policy_core.errors import ConfigError

log = logging.getLogger(__name__)

_COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TorchDenoiser(Denoiser):
    """Runs a CosmosDiT in-process.

    `compile`: None (eager) or a torch.compile mode; "reduce-overhead" captures CUDA graphs on a
    GPU, which is what removes the per-kernel launch cost of the 1-step hot path. Compilation is
    lazy: the first call at each new batch size pays it (warm up before timing).
    """

    def __init__(self, net: nn.Module, *, compile: str | None = None, sigma_conditional: float = 0.0,
                 name: str = "torch") -> None:
        if compile not in _COMPILE_MODES:
            raise ConfigError(f"unknown torch.compile mode {compile!r}; choose one of {_COMPILE_MODES}")
        self.net = net.eval()
        self.module = DenoiserModule(self.net, sigma_conditional).eval()
        param = next(self.net.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.compile_mode = compile
        self.name = name if compile is None else f"{name}+compile"
        self._fn = self.module
        if compile is not None:
            mode = None if compile == "default" else compile
            self._fn = torch.compile(self.module, mode=mode, dynamic=False, fullgraph=True)
            log.info("torch.compile(mode=%s) on %s; the first call per batch size compiles", compile, self.device)

    @torch.no_grad()
    def predict_x0(self, x_sigma_B_C_T_H_W, sigma_B, gt_B_C_T_H_W, mask_B_1_T_H_W, crossattn_B_L_D):
        B = x_sigma_B_C_T_H_W.shape[0]
        dev = self.device
        args = (
            x_sigma_B_C_T_H_W.to(dev, torch.float32),
            sigma_B.to(dev, torch.float32).reshape(B),
            expand_condition(gt_B_C_T_H_W, B, "gt latent").to(dev, torch.float32).contiguous(),
            expand_condition(mask_B_1_T_H_W, B, "condition mask").to(dev, torch.float32).contiguous(),
            expand_condition(crossattn_B_L_D, B, "text embedding").to(dev, torch.float32).contiguous(),
        )
        return self._fn(*args).float()
