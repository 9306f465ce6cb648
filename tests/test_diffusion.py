"""Diffusion math against the reference's numbers: preconditioning, σ grids, sampler, noise, loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cosmos_policy_core.diffusion import (
    DiffusionConfig,
    denoise,
    diffusion_loss,
    initial_noise,
    karras_sigmas,
    make_x0_fn,
    rectified_flow_scaling,
    sample,
    sample_training_sigma,
    sampling_sigmas,
)
from cosmos_policy_core.errors import ConfigError, ShapeError
from cosmos_policy_core.layout import LatentLayout, condition_mask

SHAPE = (16, 11, 4, 4)  # small latent: ALOHA frame count, tiny spatial size


def test_ten_and_five_step_grids_match_reference():
    ten = karras_sigmas(10)
    assert ten.dtype == torch.float64
    reference_10 = [80.0, 60.70, 45.53, 33.73, 24.66, 17.77, 12.60, 8.77, 5.99, 4.0]
    assert ten.tolist() == pytest.approx(reference_10, abs=0.006)  # the reference quotes 2 decimals
    assert karras_sigmas(5).tolist() == pytest.approx([80.0, 42.29, 20.97, 9.62, 4.0], abs=0.006)
    assert ten[0].item() == 80.0 and ten[-1].item() == pytest.approx(4.0, abs=1e-12)
    t = ten / (1 + ten)
    assert t[0].item() == pytest.approx(0.9877, abs=1e-4) and t[-1].item() == pytest.approx(0.8)
    assert torch.equal(sampling_sigmas(10), ten)


def test_step_count_semantics_and_two_step_quirk():
    assert sampling_sigmas(1).tolist() == [80.0]
    assert sampling_sigmas(2).tolist() == [80.0]  # reference: n=2 is the 1-step mode
    assert sampling_sigmas(2, DiffusionConfig(reference_two_step_quirk=False)).tolist() == pytest.approx([80.0, 4.0])
    assert len(sampling_sigmas(3)) == 3 and len(sampling_sigmas(5)) == 5
    with pytest.raises(ConfigError):
        sampling_sigmas(0)


def test_rectified_flow_scaling():
    sigma = torch.tensor([0.0, 1.0, 4.0, 80.0])
    c_skip, c_out, c_in, c_noise = rectified_flow_scaling(sigma)
    t = sigma / (1 + sigma)
    assert torch.equal(c_noise, t) and torch.equal(c_out, -t)
    assert torch.equal(c_skip, 1 - t) and torch.equal(c_in, 1 - t)
    assert c_noise[2].item() == pytest.approx(0.8)


def _counting(fn):
    calls = []

    def wrapped(x, sigma):
        calls.append((x.clone(), sigma.clone()))
        return fn(x, sigma)

    return wrapped, calls


def test_sampler_with_constant_target_contracts_linearly_to_it():
    target = torch.randn(2, *SHAPE)
    x0_fn, calls = _counting(lambda x, s: target.clone())
    noise = initial_noise([1, 2], SHAPE)
    out = sample(x0_fn, noise, num_steps=10)
    assert torch.allclose(out, target)
    sigmas = sampling_sigmas(10)
    assert len(calls) == 10
    # Euler and the RES/AB2 step are exact for a constant x0: x(σ) - c = (σ/σ_max)(x_T - c).
    for (x, s), sig in zip(calls, sigmas):
        assert torch.allclose(s, torch.full((2,), sig.item(), dtype=torch.float32))
        expect = target.double() + sig / 80.0 * (noise.double() - target.double())
        assert torch.allclose(x.double(), expect, atol=1e-4, rtol=1e-5)


def test_sampler_second_order_converges_on_gaussian_data():
    # Data x0 ~ N(mu, s^2) per element: the ideal denoiser and the exact ODE path are known.
    mu, s2 = 0.7, 0.25

    def x0_fn(x, sigma):
        sig = sigma.double().view(-1, 1, 1, 1, 1)
        return (mu + s2 / (s2 + sig**2) * (x.double() - mu)).float()

    noise = initial_noise([0], SHAPE)
    x_T = noise.double()
    exact_x_min = mu + (x_T - mu) * math.sqrt((s2 + 16.0) / (s2 + 6400.0))
    exact = mu + s2 / (s2 + 16.0) * (exact_x_min - mu)
    errors = {n: (sample(x0_fn, noise, n).double() - exact).abs().max().item() for n in (3, 5, 10, 20)}
    assert errors[20] < errors[10] < errors[5] < errors[3]
    assert errors[20] < 1e-3
    # Second order: doubling the steps cuts the error by clearly more than 2x.
    assert errors[10] / errors[20] > 3


def test_one_step_is_one_evaluation_at_sigma_max():
    noise = initial_noise([5, 6, 7], SHAPE)
    f = lambda x, s: torch.tanh(x / s.view(-1, 1, 1, 1, 1)) * 0.5  # noqa: E731
    x0_fn, calls = _counting(f)
    out1 = sample(x0_fn, noise, num_steps=1)
    assert len(calls) == 1
    assert torch.equal(calls[0][0], noise) and calls[0][1].tolist() == [80.0] * 3
    assert torch.equal(out1, f(noise, torch.full((3,), 80.0)))
    assert torch.equal(sample(f, noise, num_steps=2), out1)  # the quirk
    calls.clear()
    out2 = sample(x0_fn, noise, 2, DiffusionConfig(reference_two_step_quirk=False))
    assert len(calls) == 2 and calls[1][1][0].item() == pytest.approx(4.0) and not torch.equal(out2, out1)


def test_noise_is_numpy_randomstate_per_seed():
    a = initial_noise(195, SHAPE)
    ref = np.random.RandomState(195).standard_normal((1, *SHAPE)).astype(np.float32)
    assert a.dtype == torch.float32 and a.shape == (1, *SHAPE)
    assert torch.equal(a, torch.from_numpy(ref) * 80.0)
    batch = initial_noise([195, 196, 195], SHAPE)
    assert torch.equal(batch[0:1], a) and torch.equal(batch[2:3], a)
    assert torch.equal(batch[1:2], initial_noise(196, SHAPE))
    assert not torch.equal(batch[0], batch[1])
    bf16 = initial_noise(1, SHAPE, dtype=torch.bfloat16)
    expect = torch.from_numpy(np.random.RandomState(1).standard_normal((1, *SHAPE)).astype(np.float32))
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, expect.to(torch.bfloat16) * 80.0)


class AffineNet(torch.nn.Module):
    """A known velocity 'network': F = 0.5 x + 0.3 t (per frame), recording its inputs."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.seen = []

    def forward(self, x, timesteps_B_T, crossattn, mask, padding=None):
        self.seen.append((x.clone(), timesteps_B_T.clone(), mask.clone()))
        return self.scale * x + 0.3 * timesteps_B_T[:, None, :, None, None]


def test_loss_is_velocity_mse_times_ten():
    layout = LatentLayout.aloha()
    B = 3
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, *SHAPE, generator=g)
    eps = torch.randn(B, *SHAPE, generator=g)
    sigma = torch.tensor([0.5, 8.0, 150.0])
    mask = condition_mask(layout, "policy", B)[..., :4, :4]
    net = AffineNet()
    terms = diffusion_loss(net, x0, mask, torch.zeros(B, 2, 8), sigma, eps)

    t = (sigma / (1 + sigma)).view(B, 1, 1, 1, 1)
    F = 0.5 * ((1 - t) * (x0 + sigma.view(B, 1, 1, 1, 1) * eps)) + 0.3 * t
    per = (F - (eps - x0)) ** 2
    per[:, :, :5] = 0  # conditioning frames (policy: 0-4) contribute 0 ...
    expected = 10 * per.sum() / per.numel()  # ... but stay in the denominator
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-4)
    # The net saw clean gt and timestep 0 on conditioning frames.
    x_in, ts, m = net.seen[-1]
    assert torch.equal(x_in[:, :, :5], x0[:, :, :5])
    assert (ts[:, :5] == 0).all() and torch.allclose(ts[:, 5:], t.view(B, 1).expand(B, 6))
    assert torch.equal(terms.x0_pred_B_C_T_H_W[:, :, :5], x0[:, :, :5])

    # Value-only training: the loss mask keeps the full denominator.
    lm = torch.zeros(B, 11)
    lm[:, 10] = 1
    masked = diffusion_loss(net, x0, mask, torch.zeros(B, 2, 8), sigma, eps, loss_mask_B_T=lm)
    assert masked.loss.item() == pytest.approx((10 * per[:, :, 10].sum() / per.numel()).item(), rel=1e-4)


def test_loss_is_differentiable_and_zero_for_the_ideal_velocity():
    B = 2
    x0 = torch.randn(B, *SHAPE)
    eps = torch.randn(B, *SHAPE)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, ts, c, m, p=None):
            return self.w * (eps - x0)

    net = Oracle()
    terms = diffusion_loss(net, x0, torch.zeros(B, 1, 11, 4, 4), torch.zeros(B, 1, 8), torch.tensor([3.0, 40.0]), eps)
    assert terms.loss.item() < 1e-8
    terms.loss.backward()
    assert net.w.grad is not None


def test_training_sigma_mixture_statistics():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    sigma = sample_training_sigma(n, 11, generator=g)
    raw = (sigma / math.sqrt(11)).double().numpy()

    def cdf(m):
        phi = 0.5 * (1 + math.erf((math.log(m) - math.log(4)) / (1.2 * math.sqrt(2))))
        return 0.7 * phi + 0.3 * min(max((m - 1) / 84, 0.0), 1.0)

    lo, hi = 0.01, 200.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < 0.5 else (lo, mid)
    assert np.median(raw) == pytest.approx(lo, rel=0.02)
    assert (raw >= 1).mean() == pytest.approx(1 - cdf(1.0), abs=0.005)       # fraction σ ≥ √11·1
    assert (raw > 85).mean() == pytest.approx(0.7 * (1 - cdf_ln(85)), abs=0.003)
    assert ((raw >= 1) & (raw <= 85)).mean() > 0.3
    # Reproducible per generator seed.
    again = sample_training_sigma(n, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)
    small = sample_training_sigma(10, 11, torch.Generator().manual_seed(3))
    no_scale = sample_training_sigma(10, 11, torch.Generator().manual_seed(3), DiffusionConfig(scale_by_sqrt_frames=False))
    assert torch.allclose(no_scale * math.sqrt(11), small)


def cdf_ln(m):
    return 0.5 * (1 + math.erf((math.log(m) - math.log(4)) / (1.2 * math.sqrt(2))))


def test_x0_fn_conditioning_shared_across_a_batch_and_shape_errors():
    layout = LatentLayout.aloha()
    gt = torch.randn(1, *SHAPE)
    mask = condition_mask(layout, "world_model", 1)[..., :4, :4]
    net = AffineNet()
    x0_fn = make_x0_fn(net, gt, mask, torch.zeros(1, 3, 8))
    x = initial_noise([1, 2, 3, 4], SHAPE)
    out = x0_fn(x, torch.full((4,), 80.0))
    assert out.shape == x.shape
    assert torch.equal(out[:, :, :6], gt[:, :, :6].expand(4, -1, -1, -1, -1))
    with pytest.raises(ShapeError, match="condition mask"):
        denoise(net, x, torch.full((4,), 1.0), gt, mask[..., :2, :2], torch.zeros(1, 3, 8))
    with pytest.raises(ShapeError, match="sigma"):
        denoise(net, x, torch.ones(3), gt, mask, torch.zeros(1, 3, 8))


def test_sampling_with_the_tiny_dit():
    from cosmos_policy_core.nn.config import ModelConfig
    from cosmos_policy_core.nn.dit import CosmosDiT

    torch.manual_seed(0)
    config = ModelConfig.tiny()
    net = CosmosDiT(config).eval()
    layout = LatentLayout.aloha()
    gt = torch.randn(1, *SHAPE)
    mask = condition_mask(layout, "policy", 1)[..., :4, :4]
    text = torch.randn(1, 5, config.crossattn_emb_channels)
    x0_fn = make_x0_fn(net, gt, mask, text)
    noise = initial_noise([195, 196], SHAPE)
    out = sample(x0_fn, noise, num_steps=3)
    assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()
    assert torch.equal(out[:, :, :5], gt[:, :, :5].expand(2, -1, -1, -1, -1))
    # Deterministic: same seeds, same result; row i only depends on seed i.
    assert torch.equal(sample(x0_fn, noise, 3), out)
    assert torch.allclose(sample(x0_fn, noise[1:], 3), out[1:], atol=1e-5)
