"""Diffusion math of Cosmos Policy: rectified-flow preconditioning, training σ mixture and loss.

Also the Karras σ grid, the deterministic 2nd-order multistep (RES / Adams-Bashforth) sampler, the 1-step mode and per-seed initial noise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from cosmos_policy_core.errors import ConfigError, ShapeError


class X0Fn(Protocol):
    """Anything that predicts the clean latent: torch eager, ONNX Runtime or TensorRT backends.

    x_sigma_B_C_T_H_W is the noisy latent at noise level sigma_B (one σ per sample); the result
    has the same shape and holds the conditioning frames already replaced by their clean values.
    """

    def __call__(self, x_sigma_B_C_T_H_W: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise levels of training and sampling (the reference's resolved ALOHA values by default)."""

    sigma_max: float = 80.0
    sigma_min: float = 4.0
    rho: float = 7.0
    # Training σ: with prob lognormal_prob exp(N(lognormal_mean, lognormal_std)), else U[low, high],
    # then × sqrt(number of latent frames) (the reference's adjust_video_noise).
    lognormal_prob: float = 0.7
    lognormal_mean: float = math.log(4.0)
    lognormal_std: float = 1.2
    uniform_low: float = 1.0
    uniform_high: float = 85.0
    scale_by_sqrt_frames: bool = True
    loss_scale: float = 10.0
    sigma_conditional: float = 0.0
    # The reference's sampler turns num_steps=2 into the 1-step mode (see `sampling_sigmas`).
    reference_two_step_quirk: bool = True

    @classmethod
    def reference(cls) -> "DiffusionConfig":
        return cls()

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if not 0 <= self.lognormal_prob <= 1:
            raise ConfigError(f"lognormal_prob {self.lognormal_prob} not in [0, 1]")
        if not 0 < self.uniform_low < self.uniform_high:
            raise ConfigError(f"need 0 < uniform_low < uniform_high, got {self.uniform_low}, {self.uniform_high}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "DiffusionConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"diffusion config has unknown keys {sorted(unknown)}")
        return cls(**dict(data))


# --- preconditioning ---------------------------------------------------------------------------
def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma / (1.0 + sigma)


def t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    return t / (1.0 - t)


def rectified_flow_scaling(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) = (1 - t, -t, 1 - t, t) with t = σ / (1 + σ) (sigma_data = 1)."""
    t = sigma_to_t(sigma)
    return 1.0 - t, -t, 1.0 - t, t


def _per_frame_sigma(sigma: torch.Tensor, B: int, T: int) -> torch.Tensor:
    sigma = torch.as_tensor(sigma)
    if sigma.ndim == 0:
        sigma = sigma.expand(B)
    if sigma.ndim == 1:
        sigma = sigma[:, None]
    if sigma.ndim != 2 or sigma.shape[0] != B or sigma.shape[1] not in (1, T):
        raise ShapeError(f"sigma has shape {tuple(sigma.shape)}, expected ({B},), ({B}, 1) or ({B}, {T})")
    return sigma.expand(B, T)


def _expand_batch(x: torch.Tensor | None, B: int, name: str) -> torch.Tensor | None:
    if x is None or x.shape[0] == B:
        return x
    if x.shape[0] == 1:
        # One cached conditioning shared by N candidates (best-of-N with a single observation).
        return x.expand(B, *x.shape[1:])
    raise ShapeError(f"{name} has batch {x.shape[0]}, the noisy latent has batch {B}")


def _module_dtype(net) -> torch.dtype | None:
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.dtype
    return None


def denoise(
    net: Callable,
    x_sigma_B_C_T_H_W: torch.Tensor,
    sigma: torch.Tensor,
    gt_B_C_T_H_W: torch.Tensor,
    condition_mask_B_1_T_H_W: torch.Tensor,
    crossattn_emb_B_L_D: torch.Tensor,
    padding_mask_B_1_H_W: torch.Tensor | None = None,
    *,
    sigma_conditional: float = 0.0,
    net_dtype: torch.dtype | None = None,
    replace_gt_frames: bool = True,
    return_net_output: bool = False,
):
    """x0 prediction of a raw velocity network with frame-replacement conditioning.

    Mask=1 frames enter the network as the clean gt latent with timestep c_noise(sigma_conditional);
    the others as c_in·x_σ with timestep t. x0 = c_skip·x_σ + c_out·F, then the mask=1 frames are
    overwritten by gt (their loss is exactly 0). `sigma` is (B,), (B, 1) or per frame (B, T). The
    network runs in `net_dtype` (default: its parameters' dtype; the reference runs bf16); the
    preconditioning arithmetic runs in the dtype of x_σ.
    """
    if x_sigma_B_C_T_H_W.ndim != 5:
        raise ShapeError(f"noisy latent has shape {tuple(x_sigma_B_C_T_H_W.shape)}, expected (B, C, T, H, W)")
    B, C, T, H, W = x_sigma_B_C_T_H_W.shape
    dtype = x_sigma_B_C_T_H_W.dtype
    gt_B_C_T_H_W = _expand_batch(gt_B_C_T_H_W, B, "gt latent")
    mask_B_1_T_H_W = _expand_batch(condition_mask_B_1_T_H_W, B, "condition mask")
    crossattn_emb_B_L_D = _expand_batch(crossattn_emb_B_L_D, B, "text embedding")
    padding_mask_B_1_H_W = _expand_batch(padding_mask_B_1_H_W, B, "padding mask")
    if gt_B_C_T_H_W.shape != x_sigma_B_C_T_H_W.shape:
        raise ShapeError(f"gt latent {tuple(gt_B_C_T_H_W.shape)} != noisy latent {tuple(x_sigma_B_C_T_H_W.shape)}")
    if mask_B_1_T_H_W.shape != (B, 1, T, H, W):
        raise ShapeError(f"condition mask has shape {tuple(mask_B_1_T_H_W.shape)}, expected {(B, 1, T, H, W)}")

    sigma_B_T = _per_frame_sigma(torch.as_tensor(sigma).to(x_sigma_B_C_T_H_W.device, dtype), B, T)
    sigma_B_1_T_1_1 = sigma_B_T[:, None, :, None, None]
    c_skip, c_out, c_in, c_noise = rectified_flow_scaling(sigma_B_1_T_1_1)
    mask = mask_B_1_T_H_W.to(dtype)
    gt = gt_B_C_T_H_W.to(dtype)

    net_in_B_C_T_H_W = gt * mask + (x_sigma_B_C_T_H_W * c_in) * (1 - mask)
    c_noise_cond = sigma_to_t(torch.tensor(sigma_conditional, dtype=dtype, device=x_sigma_B_C_T_H_W.device))
    frame_is_cond_B_1_T_1_1 = mask.mean(dim=(1, 3, 4), keepdim=True)
    c_noise = c_noise_cond * frame_is_cond_B_1_T_1_1 + c_noise * (1 - frame_is_cond_B_1_T_1_1)

    run_dtype = net_dtype or _module_dtype(net) or dtype
    net_out_B_C_T_H_W = net(
        net_in_B_C_T_H_W.to(run_dtype),
        c_noise.reshape(B, T).to(run_dtype),
        crossattn_emb_B_L_D.to(run_dtype),
        mask.to(run_dtype),
        padding_mask_B_1_H_W if padding_mask_B_1_H_W is None else padding_mask_B_1_H_W.to(run_dtype),
    ).to(dtype)

    x0_B_C_T_H_W = c_skip * x_sigma_B_C_T_H_W + c_out * net_out_B_C_T_H_W
    if replace_gt_frames:
        x0_B_C_T_H_W = gt * mask + x0_B_C_T_H_W * (1 - mask)
    if return_net_output:
        return x0_B_C_T_H_W, net_out_B_C_T_H_W
    return x0_B_C_T_H_W


def make_x0_fn(
    net: Callable,
    gt_B_C_T_H_W: torch.Tensor,
    condition_mask_B_1_T_H_W: torch.Tensor,
    crossattn_emb_B_L_D: torch.Tensor,
    padding_mask_B_1_H_W: torch.Tensor | None = None,
    *,
    sigma_conditional: float = 0.0,
    net_dtype: torch.dtype | None = None,
) -> X0Fn:
    """Bind a raw network and its conditioning into an `X0Fn` for the sampler.

    The conditioning may have batch 1 and is then shared by every sample of a larger batch.
    """

    @torch.no_grad()
    def x0_fn(x_sigma_B_C_T_H_W: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
        return denoise(
            net, x_sigma_B_C_T_H_W, sigma_B, gt_B_C_T_H_W, condition_mask_B_1_T_H_W, crossattn_emb_B_L_D,
            padding_mask_B_1_H_W, sigma_conditional=sigma_conditional, net_dtype=net_dtype,
        )

    return x0_fn


# --- training ---------------------------------------------------------------------------------
def sample_training_sigma(
    batch_size: int,
    num_frames: int,
    generator: torch.Generator | None = None,
    config: DiffusionConfig = DiffusionConfig(),
    device=None,
) -> torch.Tensor:
    """(B,) training σ: the log-normal / uniform mixture, × sqrt(num_frames) (sqrt(11) for ALOHA)."""
    choose_lognormal = torch.rand(batch_size, generator=generator) < config.lognormal_prob
    lognormal = torch.exp(config.lognormal_mean + config.lognormal_std * torch.randn(batch_size, generator=generator))
    uniform = config.uniform_low + (config.uniform_high - config.uniform_low) * torch.rand(batch_size, generator=generator)
    sigma_B = torch.where(choose_lognormal, lognormal, uniform)
    if config.scale_by_sqrt_frames:
        sigma_B = sigma_B * math.sqrt(num_frames)
    return sigma_B.to(device) if device is not None else sigma_B


class LossTerms(NamedTuple):
    loss: torch.Tensor               # scalar: loss_scale × mean over every element
    per_frame_B_T: torch.Tensor      # weighted squared error averaged over C, H, W (for logging)
    x0_pred_B_C_T_H_W: torch.Tensor


def diffusion_loss(
    net: Callable,
    x0_B_C_T_H_W: torch.Tensor,
    condition_mask_B_1_T_H_W: torch.Tensor,
    crossattn_emb_B_L_D: torch.Tensor,
    sigma_B: torch.Tensor,
    epsilon_B_C_T_H_W: torch.Tensor,
    loss_mask_B_T: torch.Tensor | None = None,
    padding_mask_B_1_H_W: torch.Tensor | None = None,
    *,
    config: DiffusionConfig = DiffusionConfig(),
    net_dtype: torch.dtype | None = None,
) -> LossTerms:
    """Velocity MSE × loss_scale: ‖x0 - x0_pred‖² (1 + σ)² / σ² = ‖F - (ε - x0)‖² per element.

    x0 is the latent with injections (also the gt of the conditioning frames). The mean runs over
    all B·C·T·H·W elements: conditioning frames contribute 0 yet stay in the denominator, and so do
    frames zeroed by `loss_mask_B_T` (value-only training of V(s') / Q(s,a) samples).
    """
    B, C, T, H, W = x0_B_C_T_H_W.shape
    if epsilon_B_C_T_H_W.shape != x0_B_C_T_H_W.shape:
        raise ShapeError(f"noise {tuple(epsilon_B_C_T_H_W.shape)} != latent {tuple(x0_B_C_T_H_W.shape)}")
    sigma_B_T = _per_frame_sigma(torch.as_tensor(sigma_B).to(x0_B_C_T_H_W.device, x0_B_C_T_H_W.dtype), B, T)
    sigma_B_1_T_1_1 = sigma_B_T[:, None, :, None, None]
    x_sigma = x0_B_C_T_H_W + sigma_B_1_T_1_1 * epsilon_B_C_T_H_W
    x0_pred = denoise(
        net, x_sigma, sigma_B_T, x0_B_C_T_H_W, condition_mask_B_1_T_H_W, crossattn_emb_B_L_D, padding_mask_B_1_H_W,
        sigma_conditional=config.sigma_conditional, net_dtype=net_dtype,
    )
    weight = (1.0 + sigma_B_1_T_1_1) ** 2 / sigma_B_1_T_1_1**2
    per_element = (x0_B_C_T_H_W - x0_pred) ** 2 * weight
    if loss_mask_B_T is not None:
        if loss_mask_B_T.shape != (B, T):
            raise ShapeError(f"loss mask has shape {tuple(loss_mask_B_T.shape)}, expected ({B}, {T})")
        per_element = per_element * loss_mask_B_T.to(per_element)[:, None, :, None, None]
    return LossTerms(per_element.mean() * config.loss_scale, per_element.mean(dim=(1, 3, 4)), x0_pred)


# --- sampling ---------------------------------------------------------------------------------
def karras_sigmas(num_points: int, sigma_min: float = 4.0, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """(num_points,) float64 grid σ_i = (σmax^(1/ρ) + i/(n-1)(σmin^(1/ρ) - σmax^(1/ρ)))^ρ, from σmax to σmin."""
    if num_points < 2:
        raise ConfigError(f"a Karras grid needs at least 2 points, got {num_points}")
    i = torch.arange(num_points, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i / (num_points - 1) * (lo - hi)) ** rho


def sampling_sigmas(num_steps: int, config: DiffusionConfig = DiffusionConfig()) -> torch.Tensor:
    """σ of every network evaluation for `num_steps` (float64); its length is the NFE.

    num_steps = n ≥ 2 is an n-point Karras grid: n - 1 solver steps plus a final clean x0
    evaluation at σ_min. num_steps = 1 is one evaluation at σ_max. With
    `config.reference_two_step_quirk` (default, as the released sampler does) n = 2 is also the
    1-step mode, so n = 1 and n = 2 give identical results; the planner's 2-step value samples
    rely on it. Turn it off to get a real 2-evaluation sampler (80 → 4).
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps must be ≥ 1, got {num_steps}")
    if num_steps == 1 or (num_steps == 2 and config.reference_two_step_quirk):
        return torch.tensor([config.sigma_max], dtype=torch.float64)
    return karras_sigmas(num_steps, config.sigma_min, config.sigma_max, config.rho)


def _phi1(z: torch.Tensor) -> torch.Tensor:
    return torch.expm1(z) / z


def _phi2(z: torch.Tensor) -> torch.Tensor:
    return (_phi1(z) - 1.0) / z


def euler_step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM / Euler in σ: x_next = x0 + (σ_next/σ)(x - x0)."""
    return (sigma - sigma_next) / sigma * x0 + sigma_next / sigma * x


def res_ab2_step(
    x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
    x0_prev: torch.Tensor, sigma_prev: torch.Tensor,
) -> torch.Tensor:
    """Exponential 2-step Adams-Bashforth (RES) in log σ using the previous x0 prediction.

    h = ln(σ/σ_next), c2 = ln(σ/σ_prev)/h, x_next = (σ_next/σ) x + h[(φ1(-h) - φ2(-h)/c2) x0 + φ2(-h)/c2 x0_prev].
    """
    h = torch.log(sigma) - torch.log(sigma_next)
    c2 = (torch.log(sigma) - torch.log(sigma_prev)) / h
    phi1, phi2 = _phi1(-h), _phi2(-h)
    # Same operation order as the reference, so float64 results match it bit for bit.
    b_prev = 1.0 / c2 * phi2
    b_cur = phi1 - 1.0 / c2 * phi2
    return torch.exp(-h) * x + h * (b_cur * x0 + b_prev * x0_prev)


@torch.no_grad()
def sample(
    x0_fn: X0Fn,
    x_sigma_max_B_C_T_H_W: torch.Tensor,
    num_steps: int,
    config: DiffusionConfig = DiffusionConfig(),
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Deterministic sampler of the reference ("2ab", S_churn = 0); returns the final x0 prediction.

    The solver state is float64; `x0_fn` sees x and σ in the input's dtype. The first step is
    Euler, later ones RES/AB2, and the result is x0_fn at σ_min (the action is read at t = 0.8, not
    at an ODE endpoint). `callback(i, sigma, x0_pred)` runs after each evaluation.
    """
    in_dtype = x_sigma_max_B_C_T_H_W.dtype
    device = x_sigma_max_B_C_T_H_W.device
    B = x_sigma_max_B_C_T_H_W.shape[0]
    sigmas = sampling_sigmas(num_steps, config).to(device)
    ones_B = torch.ones(B, dtype=torch.float64, device=device)

    def evaluate(i: int, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0 = x0_fn(x.to(in_dtype), (sigma * ones_B).to(in_dtype))
        if x0.shape != x.shape:
            raise ShapeError(f"x0_fn returned shape {tuple(x0.shape)} for input {tuple(x.shape)}")
        x0 = x0.to(torch.float64)
        if callback is not None:
            callback(i, sigma, x0)
        return x0

    x = x_sigma_max_B_C_T_H_W.to(torch.float64)
    if len(sigmas) == 1:
        return evaluate(0, x, sigmas[0]).to(in_dtype)
    prev: tuple[torch.Tensor, torch.Tensor] | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(i, x, sigma)
        x = euler_step(x, x0, sigma, sigma_next) if prev is None else res_ab2_step(x, x0, sigma, sigma_next, *prev)
        prev = (x0, sigma)
    return evaluate(len(sigmas) - 1, x, sigmas[-1]).to(in_dtype)


def seeded_normal(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """float32 N(0, 1) from numpy RandomState(seed).standard_normal: identical on every device."""
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(tuple(shape)).astype(np.float32))


def initial_noise(
    seeds: int | Sequence[int],
    latent_shape_C_T_H_W: Sequence[int],
    sigma_max: float = 80.0,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, C, T, H, W) start of sampling: per-seed standard normal × σ_max.

    Row i equals the reference's single-sample noise for seeds[i] (its arch_invariant_rand draws
    float32, casts it to `dtype`, then multiplies by σ_max), so each best-of-N candidate keeps its
    own reproducible noise whatever the batch size.
    """
    seeds = [seeds] if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not seeds:
        raise ConfigError("initial_noise needs at least one seed")
    shape = (1, *latent_shape_C_T_H_W)
    noise = torch.cat([seeded_normal(int(s), shape) for s in seeds])
    # Cast first, then scale, in that order like the reference (it matters for bf16).
    return noise.to(device=device, dtype=dtype) * sigma_max


__all__ = [
    "X0Fn", "DiffusionConfig", "LossTerms",
    "sigma_to_t", "t_to_sigma", "rectified_flow_scaling", "denoise", "make_x0_fn",
    "sample_training_sigma", "diffusion_loss",
    "karras_sigmas", "sampling_sigmas", "euler_step", "res_ab2_step", "sample",
    "seeded_normal", "initial_noise",
]
