"""GPU latency of the policy hot path with random weights: the DiT forward (eager vs torch.compile + CUDA graphs),
the Wan2.1 VAE encode / decode of the ALOHA clip, the fast-path VAE encoder of the conditioning frames (eager,
compiled, ONNX Runtime, TensorRT), image preprocessing (the policy's and the CPU reference), the whole observation ->
action chunk call, best-of-8 planning, and the policy's chunk latency while the planner runs beside it.

Meant for one unattended run on a GPU machine: every step is guarded (a failure is recorded with its traceback and the
run goes on), steps past `--deadline` are skipped, and the JSON (`--out`) is rewritten after every step, so a killed
run still leaves its numbers. Steps run cheapest and most important first; the torch.compile ones pay their compile
time in the warm-up, reported as `compile_s`.

  GPU:  python benchmarks/gpu_latency.py --out $OUT/gpu_latency.json
  CPU smoke test:  python benchmarks/gpu_latency.py --model tiny --device cpu --image-size 64 --repeats 2
Sections: dit, vae, chunk (the hot path), encoder (fast-path VAE encoder), plan (best-of-8, policy beside it).

Timed calls run under torch.no_grad(), the mode `CosmosPolicy.act` uses, not inference_mode: dynamo guards on the
inputs' dispatch keys, and inference tensors would make the compiled DiT recompile (minutes for the 2B model) when
the chunk steps reuse it.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cosmos_policy_core.diffusion import DiffusionConfig, initial_noise
from cosmos_policy_core.engines.torch_engine import TorchDenoiser
from cosmos_policy_core.layout import LatentLayout, build_pixel_clip, clip_to_vae_input, condition_mask
from cosmos_policy_core.nn.config import ModelConfig
from cosmos_policy_core.nn.dit import CosmosDiT
from cosmos_policy_core.nn.wan_vae import VAEConfig, WanVAE
from cosmos_policy_core.runtime.policy import PolicyConfig
from cosmos_policy_core.testing import DEFAULT_TASKS, aloha_like_stats, random_text_embeddings

TARGET_CHUNK_MS = 40.0  # the target: observation -> chunk, 2B, 1 step, bf16, H100
MODELS = {"2b": (ModelConfig.cosmos_predict2_2b, VAEConfig.wan21), "tiny": (ModelConfig.tiny, VAEConfig.tiny)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_REPEATS = {"dit": 20, "vae": 5, "chunk": 10, "chunk_multi": 5, "encoder": 10, "preprocess": 10, "plan": 3}
SECTIONS = ("dit", "vae", "chunk", "encoder", "plan")
PLAN_CANDIDATES = 8
WHOLE_CLIP_FIELD = "vae_encode_whole_clip"   # PolicyConfig: encode all 41 frames up front (the reference's way)
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune-no-cudagraphs", "max-autotune")
CUDA_ONLY_MODES = {"reduce-overhead": "CUDA graphs need a CUDA device",
                   "max-autotune": "CUDA graphs need a CUDA device",
                   "max-autotune-no-cudagraphs": "autotuning targets GPU kernels; on CPU it only costs compile time"}
EAGER_NEED_S = {"2b": 8.0, "tiny": 0.0}  # least time left to start a non-compiling step


def log(msg: str, start: float) -> None:
    print(f"[gpu_latency {time.perf_counter() - start:7.1f}s] {msg}", flush=True)


class Skip(Exception):
    """Raised by a step that cannot run here; recorded as skipped with its message."""


# ---------------------------------------------------------------------------------------------------------------------
# Recording: one guarded call per step, the JSON rewritten around each
# ---------------------------------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self, out: Path, deadline_s: float, meta: dict) -> None:
        self.start = time.perf_counter()
        self.out = out
        self.deadline_s = deadline_s
        self.current: str | None = None
        self.report: dict = {"benchmark": "gpu_latency", **meta, "env": {}, "steps": {}, "summary": {},
                             "finished": False}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.deadline_s - self.elapsed()

    def write(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 3)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=str))
        os.replace(tmp, self.out)  # atomic: a kill never leaves half a file

    def log(self, msg: str) -> None:
        log(msg, self.start)

    def run(self, name: str, section: str, fn: Callable[[], dict], need_s: float = 0.0) -> dict | None:
        steps = self.report["steps"]
        left = self.remaining()
        if left < need_s:
            reason = (f"deadline: {left:.0f} s of {self.deadline_s:.0f} s left, the step needs about {need_s:.0f} s"
                      if left > 0 else f"deadline of {self.deadline_s:.0f} s passed")
            steps[name] = {"section": section, "status": "skipped", "reason": reason}
            self.log(f"{name}: skipped ({reason})")
            self.write()
            return None
        steps[name] = {"section": section, "status": "running", "started_at_s": round(self.elapsed(), 3)}
        self.current = name
        self.write()
        self.log(f"{name}: start")
        t0 = time.perf_counter()
        try:
            result = fn()
            entry = {"section": section, "status": "ok", **result}
        except Skip as exc:
            entry = {"section": section, "status": "skipped", "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 -- one broken step must not lose the others (OOM included)
            entry = {"section": section, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                     "traceback": traceback.format_exc()}
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        entry["started_at_s"] = steps[name]["started_at_s"]
        entry["step_s"] = round(time.perf_counter() - t0, 3)
        steps[name] = entry
        self.current = None
        self.write()
        self.log(f"{name}: {_one_line(entry)}")
        return entry if entry["status"] == "ok" else None

    def on_signal(self, signum, _frame) -> None:
        if self.current is not None:
            self.report["steps"][self.current].update(status="killed", reason=f"signal {signum} during the step")
        self.report["killed_by_signal"] = signum
        self.write()
        self.log(f"signal {signum}: partial results written to {self.out}")
        sys.exit(128 + signum)


def _one_line(entry: dict) -> str:
    if entry["status"] == "ok":
        parts = [f"median {entry['median_ms']:.2f} ms"] if "median_ms" in entry else []
        if "p90_ms" in entry:
            parts.append(f"p90 {entry['p90_ms']:.2f} ms")
        if "compile_s" in entry:
            parts.append(f"compile {entry['compile_s']:.1f} s")
        if entry.get("counters", {}).get("inductor.cudagraph_skips"):
            parts.append("CUDA GRAPHS SKIPPED")
        return "ok, " + ", ".join(parts) + f" ({entry['step_s']:.1f} s)"
    if entry["status"] == "error":
        return f"ERROR {entry['error'].splitlines()[0][:300]}"
    return f"{entry['status']}: {entry.get('reason', '')}"


def summarize(seconds: list[float]) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"n": int(ms.size), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "min_ms": float(ms.min()), "mean_ms": float(ms.mean()), "samples_ms": [round(float(x), 4) for x in ms]}


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {f"{outer}.{inner}": int(v) for outer, c in counters.items() for inner, v in c.items()
            if isinstance(v, (int, float)) and outer != "aten_mm_info"}  # per-GEMM-shape counts: noise here


def _counter_delta(before: dict[str, int]) -> dict[str, int]:
    after = _counters()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# ---------------------------------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__, "cuda_available": torch.cuda.is_available(), "device": str(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        env["triton"] = f"unavailable ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name, sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
            total_memory_gib=round(props.total_memory / 2**30, 2), cudnn=torch.backends.cudnn.version(),
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
            sdpa_mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
            sdpa_cudnn=getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)(),
        )
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit,"
                                  "memory.total", "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
            env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except Exception as exc:  # noqa: BLE001
            env["nvidia_smi"] = f"unavailable ({type(exc).__name__}: {exc})"
    return env


# ---------------------------------------------------------------------------------------------------------------------
# The models and inputs, built once on the device and shared by the steps
# ---------------------------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args, self.rec = args, rec
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        model_fn, vae_fn = MODELS[args.model]
        self.model_config: ModelConfig = model_fn()
        self.vae_config: VAEConfig = vae_fn()
        self.layout = replace(LatentLayout.aloha(), image_size=args.image_size)
        self.diffusion = DiffusionConfig()
        self.task = DEFAULT_TASKS[0]
        self.stats = aloha_like_stats(0, self.layout.action_dim, self.layout.proprio_dim)
        self.text = random_text_embeddings([self.task], self.model_config.crossattn_emb_channels)
        self._nets: dict[str, CosmosDiT] = {}
        self._vaes: dict[torch.dtype, WanVAE] = {}
        self._denoisers: dict[str, TorchDenoiser] = {}
        self._encoders: dict[str, object] = {}
        self.compile_s: dict[str, float] = {}  # mode -> measured first-call seconds
        self.compiled_shapes: set[tuple[str, int]] = set()  # (mode, batch) already compiled
        self.work_dir = Path(tempfile.mkdtemp(prefix="gpu_latency_"))  # exported graphs and engines

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def repeats(self, kind: str) -> int:
        return self.args.repeats or DEFAULT_REPEATS[kind]

    # -- networks --------------------------------------------------------------------------------------------------
    def net(self, key: str) -> CosmosDiT:
        """One random-weight DiT per use: 'eager', 'compiled' (never called eagerly, as a compiled deployment)."""
        if key not in self._nets:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            with torch.device(self.device):  # initialised on the device: no CPU pass over 2B parameters
                net = CosmosDiT(self.model_config)
            with torch.no_grad():  # non-zero AdaLN up-projections, as testing.build_random_checkpoint does
                for name, p in net.named_parameters():
                    if "adaln_modulation" in name and not p.any():
                        p.normal_(0.0, 0.02)
            self._nets[key] = net.to(self.dtype).eval()
            self.sync()
            self.rec.log(f"built DiT '{key}' ({self.n_params(net) / 1e9:.3f} B params, {self.args.dtype}) "
                         f"in {time.perf_counter() - t0:.1f} s")
        return self._nets[key]

    @staticmethod
    def n_params(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def vae(self, dtype: torch.dtype) -> WanVAE:
        if dtype not in self._vaes:
            torch.manual_seed(1)
            with torch.device(self.device):
                vae = WanVAE(self.vae_config)
            self._vaes[dtype] = vae.to(dtype).eval()
        return self._vaes[dtype]

    def denoiser(self, mode: str | None) -> TorchDenoiser:
        key = mode or "eager"
        if key not in self._denoisers:
            net = self.net("eager" if mode is None else "compiled")
            self._denoisers[key] = TorchDenoiser(net, compile=mode, sigma_conditional=self.diffusion.sigma_conditional,
                                                 name=key)
        return self._denoisers[key]

    def compile_need_s(self, mode: str, batch: int = 1) -> float:
        """Least time left to start a step that compiles `mode` at `batch` (0 if it is compiled already)."""
        if (mode, batch) in self.compiled_shapes:
            return EAGER_NEED_S[self.args.model]
        known = max(self.compile_s.values(), default=0.0)
        factor = 3.0 if mode.startswith("max-autotune") else 1.0
        return max(self.args.compile_reserve, known * factor)

    # -- inputs exactly as CosmosPolicy.sample_role hands them to the denoiser ---------------------------------------
    def denoiser_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        lay = self.layout
        x = initial_noise(list(range(batch)), lay.latent_shape, self.diffusion.sigma_max, device=self.device)
        sigma = torch.full((batch,), self.diffusion.sigma_max, dtype=torch.float64, device=self.device)
        gt = torch.randn((1, *lay.latent_shape), generator=torch.Generator().manual_seed(2)).to(self.device)
        mask = condition_mask(lay, "policy", 1, device=self.device)
        text = self.text[self.task].float().reshape(1, *self.text[self.task].shape[-2:]).to(self.device)
        return x, sigma.to(torch.float32), gt, mask, text

    def pixel_clip(self) -> torch.Tensor:
        """(1, 41, S, S, 3) uint8 on the CPU, as `encode_observation` builds it from the camera images."""
        rng = np.random.default_rng(0)
        S = self.layout.image_size
        images = {cam: torch.from_numpy(rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
                  for cam in self.layout.camera_sources}
        return build_pixel_clip(self.layout, images)

    def policy(self, mode: str | None, encoder=None, **config):
        """A CosmosPolicy on the bench's networks: the DiT eager or compiled with `mode`, the eager VAE unless a
        fast-path `encoder` is given, PolicyConfig fields from `config`."""
        from cosmos_policy_core.runtime.policy import CosmosPolicy, PolicyConfig

        return CosmosPolicy(self.layout, self.vae(self.dtype), self.denoiser(mode), self.stats, self.text,
                            diffusion=self.diffusion, vae_encoder=encoder, config=PolicyConfig(**config))

    def clip_encoder(self, mode: str | None):
        """The fast-path VAE encoder of the conditioning frames, eager or compiled with `mode` (one per mode)."""
        from cosmos_policy_core.engines.encoder import TorchClipEncoder

        key = mode or "eager"
        if key not in self._encoders:
            self._encoders[key] = TorchClipEncoder(self.vae(self.dtype), self.layout, compile=mode)
        return self._encoders[key]

    def vae_input(self) -> torch.Tensor:
        """The [-1, 1] clip on the device, in the VAE's dtype, as the policy hands it to an encoder."""
        return clip_to_vae_input(self.pixel_clip().to(self.device), dtype=self.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------
def timed_calls(bench: Bench, fn: Callable[[int], object], n: int) -> tuple[list[float], bool]:
    """Wall seconds of n synchronized calls fn(i); stops early (truncated=True) once the deadline has passed."""
    times: list[float] = []
    for i in range(n):
        if bench.rec.remaining() < 0 and len(times) >= min(3, n):
            return times, True
        bench.sync()
        t0 = time.perf_counter()
        fn(i)
        bench.sync()
        times.append(time.perf_counter() - t0)
    return times, False


def warm_up(bench: Bench, fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        bench.sync()
        t0 = time.perf_counter()
        fn(i)
        bench.sync()
        out.append(round(time.perf_counter() - t0, 4))
    return out


def _memory(bench: Bench) -> dict:
    if bench.device.type != "cuda":
        return {}
    return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(bench.device) / 2**30, 3)}


def _reset_memory(bench: Bench) -> None:
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)


def _check_mode(bench: Bench, mode: str | None) -> None:
    if mode is not None and bench.device.type != "cuda" and mode in CUDA_ONLY_MODES:
        raise Skip(f"torch.compile mode {mode!r} skipped on {bench.device}: {CUDA_ONLY_MODES[mode]}")


def dit_step(bench: Bench, mode: str | None, batch: int) -> dict:
    """TorchDenoiser.predict_x0 (preconditioning + DiT + frame replacement) on policy-role inputs."""
    _check_mode(bench, mode)
    den = bench.denoiser(mode)
    args = bench.denoiser_inputs(batch)
    n_warm = bench.args.warmup if mode is None else max(3, bench.args.warmup)  # CUDA graphs: warm, record, replay
    before = _counters()
    _reset_memory(bench)
    with torch.no_grad():
        warm = warm_up(bench, lambda i: den.predict_x0(*args), n_warm)
        if mode is not None:
            bench.compile_s.setdefault(mode, warm[0])
            bench.compiled_shapes.add((mode, batch))
        times, truncated = timed_calls(bench, lambda i: den.predict_x0(*args), bench.repeats("dit"))
        finite = bool(torch.isfinite(den.predict_x0(*args)).all())  # read before another call reuses the output
    lay, cfg = bench.layout, bench.model_config
    C, T, H, W = lay.latent_shape
    result = {
        "mode": mode or "eager", "batch": batch, "dtype": bench.args.dtype, "model": bench.args.model,
        "params": bench.n_params(den.net), "latent_shape": [batch, C, T, H, W],
        "tokens": T // cfg.patch_temporal * (H // cfg.patch_spatial) * (W // cfg.patch_spatial),
        "context_tokens": int(args[4].shape[1]), "warmup_s": warm, "output_finite": finite,
        "truncated": truncated, **summarize(times), **_memory(bench),
    }
    if mode is not None:
        result["compile_s"] = warm[0]
        result["counters"] = _counter_delta(before)
    result["ms_per_sample"] = result["median_ms"] / batch
    return result


def vae_encode_step(bench: Bench, dtype_name: str) -> dict:
    """uint8 clip -> normalized latent, as CosmosPolicy.encode_clip: to device, [-1, 1], one causal pass."""
    dtype = DTYPES[dtype_name]
    vae = bench.vae(dtype)
    clip = bench.pixel_clip()
    chunk_frames = PolicyConfig().vae_chunk_frames

    last: list[torch.Tensor] = []

    def run(_i: int) -> None:
        last[:] = [vae.encode(clip_to_vae_input(clip.to(bench.device)), chunk_frames=chunk_frames).float()]

    _reset_memory(bench)
    with torch.no_grad():
        warm = warm_up(bench, run, min(2, bench.args.warmup))
        times, truncated = timed_calls(bench, run, bench.repeats("vae"))
    z = last[0]
    return {"dtype": dtype_name, "model": bench.args.model, "params": bench.n_params(vae),
            "clip_shape": list(clip.shape), "latent_shape": list(z.shape), "chunk_frames": chunk_frames,
            "output_finite": bool(torch.isfinite(z).all()), "warmup_s": warm, "truncated": truncated,
            **summarize(times), **_memory(bench)}


def vae_decode_step(bench: Bench) -> dict:
    """The predicted-frame decode of CosmosPolicy.decode_future_images: latents up to the last future image
    -> pixels -> uint8 on the CPU (runs after the chunk is published)."""
    vae = bench.vae(bench.dtype)
    lay = bench.layout
    future_idx = [lay.index(f"future_{c}") for c in lay.cameras]
    C, _, H, W = lay.latent_shape
    z = torch.randn((1, C, max(future_idx) + 1, H, W), generator=torch.Generator().manual_seed(3)).to(bench.device)
    decode_chunk = PolicyConfig().vae_decode_chunk

    def run(_i: int) -> list[np.ndarray]:
        video = vae.decode(z.to(vae.dtype), chunk_latents=decode_chunk).float()
        pixels = ((video + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
        return [pixels[0, :, lay.pixel_frame(i)].permute(1, 2, 0).cpu().numpy() for i in future_idx]

    _reset_memory(bench)
    with torch.no_grad():
        warm = warm_up(bench, run, min(2, bench.args.warmup))
        times, truncated = timed_calls(bench, run, bench.repeats("vae"))
    return {"dtype": bench.args.dtype, "latent_shape": list(z.shape), "chunk_latents": decode_chunk,
            "warmup_s": warm, "truncated": truncated, **summarize(times), **_memory(bench)}


def chunk_step(bench: Bench, mode: str | None, num_steps: int, **config) -> dict:
    """CosmosPolicy.act(obs, num_steps) from 480x640 camera frames to the unnormalized chunk, without the
    predicted-frame decode (it runs after publishing); with a compile `mode` the DiT and the VAE encoder are
    compiled, as engine "compile" runs them. Two views: the wall time of act() with its own stage timings
    (unsynchronized: GPU work queued in one stage is paid in a later one), and the same stages called one by
    one with a device sync between them. `config`: PolicyConfig fields."""
    from cosmos_policy_core.runtime.policy import TIMING_KEYS
    from cosmos_policy_core.testing import random_observation

    _check_mode(bench, mode)
    policy = bench.policy(mode, encoder=None if mode is None else bench.clip_encoder(mode), **config)
    obs = random_observation(bench.layout, stats=bench.stats, seed=1, task=bench.task)
    n = bench.repeats("chunk" if num_steps == 1 else "chunk_multi")
    n_warm = bench.args.warmup if mode is None else max(3, bench.args.warmup)
    before = _counters()
    lib_timings: list[dict[str, float]] = []

    def act(i: int) -> None:
        chunk = policy.act(obs, seed=i, num_steps=num_steps, return_future_images=False)
        lib_timings.append(chunk.timings)

    stages: dict[str, list[float]] = {k: [] for k in ("preprocess", "vae_encode", "denoise", "postprocess")}

    def staged(i: int) -> None:
        t0 = time.perf_counter()
        cond = policy.encode_observation(obs)
        bench.sync()
        t1 = time.perf_counter()
        latent = policy.sample_actions(cond, [i], num_steps)
        bench.sync()
        t2 = time.perf_counter()
        policy.actions_from_latent(latent)
        policy.values_from_latent(latent)
        policy.future_proprio_from_latent(latent)
        t3 = time.perf_counter()
        stages["preprocess"].append(cond.timings["preprocess"])
        stages["vae_encode"].append(t1 - t0 - cond.timings["preprocess"])
        stages["denoise"].append(t2 - t1)
        stages["postprocess"].append(t3 - t2)

    _reset_memory(bench)
    warm = warm_up(bench, act, n_warm)
    if mode is not None:
        bench.compile_s.setdefault(mode, warm[0])
        bench.compiled_shapes.add((mode, 1))
    lib_timings.clear()
    times, truncated = timed_calls(bench, act, n)
    staged_times, staged_truncated = timed_calls(bench, staged, n)
    lib = {k: float(np.median([t[k] for t in lib_timings])) * 1e3 for k in TIMING_KEYS}
    result = {
        "mode": mode or "eager", "num_steps": num_steps, "dtype": bench.args.dtype, "model": bench.args.model,
        "policy_config": config, "encoder": "compiled" if mode is not None else "eager VAE",
        "image_size": bench.layout.image_size, "camera_frame_shape": list(next(iter(obs.images.values())).shape),
        "warmup_s": warm, "truncated": truncated or staged_truncated, **summarize(times),
        "act_timings_median_ms": lib,
        "staged_median_ms": {k: float(np.median(v)) * 1e3 for k, v in stages.items()},
        "staged_total_median_ms": float(np.median(staged_times)) * 1e3,
        **_memory(bench),
    }
    if mode is not None:
        result["compile_s"] = warm[0]
        result["counters"] = _counter_delta(before)
    return result


def _time_encoder(bench: Bench, encoder, name: str, n_warm: int) -> dict:
    video = bench.vae_input()
    last: list[torch.Tensor] = []
    _reset_memory(bench)
    with torch.no_grad():
        warm = warm_up(bench, lambda i: last.append(encoder(video)), n_warm)
        times, truncated = timed_calls(bench, lambda i: last.append(encoder(video)), bench.repeats("encoder"))
    z = last[-1]
    ref = bench.vae(bench.dtype).encode(video, chunk_frames=None)[:, :, : z.shape[2]].float()
    return {"encoder": name, "dtype": bench.args.dtype, "frames": encoder.frames, "prefix_frames": encoder.prefix_frames,
            "latent_shape": list(z.shape), "max_abs_diff_vs_eager_vae": float((z.float().cpu() - ref.cpu()).abs().max()),
            "warmup_s": warm, "truncated": truncated, **summarize(times), **_memory(bench)}


def encoder_step(bench: Bench, mode: str | None) -> dict:
    """The fast-path encoder (engines.encoder.TorchClipEncoder): the conditioning frames only (ALOHA: 17 of 41,
    12 after the constant black prefix), eager or torch.compile'd with `mode`; compared with the VAE's own encode."""
    _check_mode(bench, mode)
    encoder = bench.clip_encoder(mode)
    before = _counters()
    result = _time_encoder(bench, encoder, encoder.name, bench.args.warmup if mode is None else max(3, bench.args.warmup))
    if mode is not None:
        result.update(mode=mode, compile_s=result["warmup_s"][0], counters=_counter_delta(before))
    return result


def _export_encoder(bench: Bench, directory: Path) -> dict:
    from cosmos_policy_core.engines.export import export_vae_encoder_onnx

    return export_vae_encoder_onnx(bench.vae(bench.dtype), bench.layout, directory / "vae_encoder.onnx",
                                   dynamo=bench.dtype != torch.float32)


def encoder_onnx_step(bench: Bench) -> dict:
    """The exported encoder graph (the bench dtype's types) on ONNX Runtime: the CPU twin of the TensorRT engine."""
    import onnxruntime as ort

    from cosmos_policy_core.engines.onnx_engine import OnnxClipEncoder

    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    if bench.device.type == "cuda" and not gpu:
        raise Skip("onnxruntime has no CUDA provider here (onnxruntime-gpu not installed): the CPU run of a "
                   "2B VAE says nothing about the GPU path")
    directory = bench.work_dir / "encoder_onnx"
    t0 = time.perf_counter()
    entry = _export_encoder(bench, directory)
    export_s = time.perf_counter() - t0
    encoder = OnnxClipEncoder(directory / entry["onnx"], frames=entry["frames"], prefix_frames=entry["prefix_frames"],
                              providers=["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"])
    return {"export_s": round(export_s, 2), **_time_encoder(bench, encoder, "onnx", min(1, bench.args.warmup))}


def _tensorrt_or_skip() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        raise Skip("TensorRT is not installed on this machine (pip install 'cosmos-aloha[trt]')")


def encoder_tensorrt_step(bench: Bench) -> dict:
    """The exported encoder graph built into a strongly typed TensorRT engine (its precision from the graph)."""
    from cosmos_policy_core.engines.tensorrt_engine import TensorRTClipEncoder, build_engine_from_onnx

    _tensorrt_or_skip()
    if bench.device.type != "cuda":
        raise Skip("TensorRT needs a CUDA device")
    directory = bench.work_dir / "encoder_trt"
    t0 = time.perf_counter()
    entry = _export_encoder(bench, directory)
    plan = build_engine_from_onnx(directory / entry["onnx"], directory / "vae_encoder.plan")
    build_s = time.perf_counter() - t0
    encoder = TensorRTClipEncoder.from_engine_file(plan, frames=entry["frames"], prefix_frames=entry["prefix_frames"],
                                                   device=bench.device, expect=entry)
    return {"export_and_build_s": round(build_s, 2), **_time_encoder(bench, encoder, "tensorrt", 2)}


def dit_tensorrt_step(bench: Bench) -> dict:
    """The DiT denoiser graph (the bench dtype's types) as a strongly typed TensorRT engine, batch 1."""
    from cosmos_policy_core.engines.export import export_denoiser_onnx
    from cosmos_policy_core.engines.tensorrt_engine import TensorRTDenoiser, build_engine_from_onnx

    _tensorrt_or_skip()
    if bench.device.type != "cuda":
        raise Skip("TensorRT needs a CUDA device")
    directory = bench.work_dir / "dit_trt"
    args = bench.denoiser_inputs(1)
    t0 = time.perf_counter()
    net = bench.net("eager")
    entry = export_denoiser_onnx(net, bench.layout, directory / "denoiser_b1.onnx", batch=1, text_len=int(args[4].shape[1]),
                                 dynamo=bench.dtype != torch.float32, sigma_conditional=bench.diffusion.sigma_conditional)
    plan = build_engine_from_onnx(directory / entry["onnx"], directory / "denoiser_b1.plan")
    build_s = time.perf_counter() - t0
    den = TensorRTDenoiser.from_engine_file(plan, device=bench.device, expect=entry)
    with torch.no_grad():
        warm = warm_up(bench, lambda i: den.predict_x0(*args), 2)
        times, truncated = timed_calls(bench, lambda i: den.predict_x0(*args), bench.repeats("dit"))
    return {"batch": 1, "dtype": bench.args.dtype, "export_and_build_s": round(build_s, 2), "warmup_s": warm,
            "truncated": truncated, **summarize(times), **_memory(bench)}


def preprocess_step(bench: Bench, which: str) -> dict:
    """Three 480x640 camera frames -> the model's 224² images: `policy` = what the chunk runs
    (CosmosPolicy.preprocess_images, on the policy's device where it does that), `cpu_reference` = the reference
    pipeline on the CPU (runtime.images.prepare_images)."""
    from cosmos_policy_core.runtime.images import prepare_images
    from cosmos_policy_core.testing import random_observation

    policy = bench.policy(None)
    obs = random_observation(bench.layout, stats=bench.stats, seed=1, task=bench.task)
    lay = bench.layout
    if which == "policy":
        def run(_i: int):
            return policy.preprocess_images(obs.images)
    else:
        frames = [obs.images[c] for c in lay.camera_sources]

        def run(_i: int):
            return prepare_images(frames, lay.image_size, list(lay.camera_sources), policy.config.crop_area)
    warm = warm_up(bench, run, 2)
    times, truncated = timed_calls(bench, run, bench.repeats("preprocess"))
    reference = prepare_images([obs.images[c] for c in lay.camera_sources], lay.image_size,
                               list(lay.camera_sources), policy.config.crop_area)
    got = run(0)
    got = list(got.values()) if isinstance(got, dict) else got
    diff = max(int(np.abs(np.asarray(g if isinstance(g, np.ndarray) else g.cpu().numpy()).astype(int)
                          - r.astype(int)).max()) for g, r in zip(got, reference))
    return {"which": which, "crop_area": policy.config.crop_area, "frame_shape": list(obs.images[lay.camera_sources[0]].shape),
            "max_pixel_diff_vs_cpu_reference": diff, "warmup_s": warm, "truncated": truncated, **summarize(times)}


def _planner(bench: Bench, mode: str | None):
    from cosmos_policy_core.runtime.planner import BestOfNPlanner, PlannerConfig

    n = bench.args.plan_candidates
    return BestOfNPlanner(bench.policy(mode), PlannerConfig(num_candidates=n, action_steps=1, batch_candidates=n))


def plan_step(bench: Bench, mode: str | None) -> dict:
    """BestOfNPlanner.plan with --plan-candidates (8) candidates (1-step actions; world model and V(s') ensembles of the reference's
    planning defaults), from a camera observation to the chosen chunk."""
    from cosmos_policy_core.testing import random_observation

    _check_mode(bench, mode)
    planner = _planner(bench, mode)
    obs = random_observation(bench.layout, stats=bench.stats, seed=2, task=bench.task)
    results = []
    warm = warm_up(bench, lambda i: planner.plan(obs, base_seed=i), 1 if mode is None else 2)
    _reset_memory(bench)
    times, truncated = timed_calls(bench, lambda i: results.append(planner.plan(obs, base_seed=i)), bench.repeats("plan"))
    cfg = planner.config
    return {"mode": mode or "eager", "num_candidates": cfg.num_candidates, "action_steps": cfg.action_steps,
            "world_model_steps": cfg.world_model_steps, "value_steps": cfg.value_steps,
            "scored": [r.num_scored for r in results], "plan_timings_median_ms": {
                k: float(np.median([r.timings.get(k, 0.0) for r in results])) * 1e3 for k in results[-1].timings},
            "warmup_s": warm, "truncated": truncated, **summarize(times), **_memory(bench)}


def chunk_beside_planner_step(bench: Bench, mode: str | None) -> dict:
    """The 1-step chunk (CosmosPolicy.act, DiT compiled with `mode`) timed while a best-of-N planner plans in a
    second thread of the same process on the same device and weights; `alone_median_ms` is the same call right
    before, without the planner. The planner runs eager: CUDA-graph replays of one compiled module from two
    threads are not safe. Threads share the GIL, which separate node processes would not."""
    from cosmos_policy_core.testing import random_observation

    _check_mode(bench, mode)
    policy = bench.policy(mode)
    planner = _planner(bench, None)
    obs = random_observation(bench.layout, stats=bench.stats, seed=1, task=bench.task)
    plan_obs = random_observation(bench.layout, stats=bench.stats, seed=2, task=bench.task)

    def act(i: int) -> None:
        policy.act(obs, seed=i, num_steps=1, return_future_images=False)

    warm_up(bench, act, max(2, bench.args.warmup))
    planner.plan(plan_obs)
    alone, _ = timed_calls(bench, act, bench.repeats("chunk"))
    stop = threading.Event()
    plans: list[float] = []
    errors: list[BaseException] = []

    def plan_loop() -> None:
        try:
            with torch.no_grad():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    planner.plan(plan_obs, base_seed=len(plans))
                    plans.append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 -- reported in the step's result
            errors.append(exc)

    thread = threading.Thread(target=plan_loop, name="planner", daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        beside, truncated = timed_calls(bench, act, bench.repeats("chunk"))
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    result = {"mode": mode or "eager", "planner_mode": "eager", "alone_median_ms": float(np.median(alone)) * 1e3,
              "plans_completed": len(plans), "plan_median_ms": float(np.median(plans)) * 1e3 if plans else None,
              "truncated": truncated, **summarize(beside)}
    result["slowdown"] = result["median_ms"] / result["alone_median_ms"]
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The plan: most important and cheapest first
# ---------------------------------------------------------------------------------------------------------------------
def plan(bench: Bench, sections: set[str], modes: list[str], chunk_steps: list[int]):
    """(name, section, fn, need_s) in run order; need_s is evaluated when the step is reached."""
    eager_need = EAGER_NEED_S[bench.args.model]
    usable = [m for m in modes if not (bench.device.type != "cuda" and m in CUDA_ONLY_MODES)]
    main_mode = usable[0] if usable else None
    other_dtype = "fp32" if bench.args.dtype == "bf16" else None
    multi = [s for s in chunk_steps if s != 1]
    steps = []

    def add(name, section, fn, need):
        if section in sections:
            steps.append((name, section, fn, need))

    add("dit_eager_b1", "dit", lambda: dit_step(bench, None, 1), lambda: eager_need)
    add("dit_eager_b8", "dit", lambda: dit_step(bench, None, 8), lambda: eager_need)
    add(f"vae_encode_{bench.args.dtype}", "vae", lambda: vae_encode_step(bench, bench.args.dtype), lambda: eager_need)
    add(f"vae_decode_{bench.args.dtype}", "vae", lambda: vae_decode_step(bench), lambda: eager_need)
    if 1 in chunk_steps:
        add("chunk_eager_1step", "chunk", lambda: chunk_step(bench, None, 1), lambda: eager_need)
        if WHOLE_CLIP_FIELD in {f.name for f in dataclasses.fields(PolicyConfig)}:
            # the reference's cost: all 41 pixel frames encoded up front, not only the 17 that condition
            add("chunk_eager_1step_whole_clip", "chunk",
                lambda: chunk_step(bench, None, 1, **{WHOLE_CLIP_FIELD: True}), lambda: eager_need)
    # CUDA-only modes on a CPU run are recorded as skipped, with the reason
    for mode in modes:
        if mode != main_mode and mode in CUDA_ONLY_MODES and bench.device.type != "cuda":
            add(f"dit_{mode}_b1", "dit", lambda m=mode: dit_step(bench, m, 1), lambda: 0.0)
    if main_mode is not None:
        m = main_mode
        add(f"dit_{m}_b1", "dit", lambda: dit_step(bench, m, 1), lambda: bench.compile_need_s(m, 1))
        if 1 in chunk_steps:
            add(f"chunk_{m}_1step", "chunk", lambda: chunk_step(bench, m, 1), lambda: bench.compile_need_s(m, 1))
    if other_dtype:
        add(f"vae_encode_{other_dtype}", "vae", lambda: vae_encode_step(bench, other_dtype), lambda: eager_need)
    for s in multi:
        add(f"chunk_eager_{s}step", "chunk", lambda s=s: chunk_step(bench, None, s), lambda: eager_need)
        if main_mode is not None:
            add(f"chunk_{main_mode}_{s}step", "chunk", lambda s=s: chunk_step(bench, main_mode, s),
                lambda: bench.compile_need_s(main_mode, 1))
    # the fast-path encoder and the preprocessing
    add("preprocess_policy", "encoder", lambda: preprocess_step(bench, "policy"), lambda: 0.0)
    add("preprocess_cpu_reference", "encoder", lambda: preprocess_step(bench, "cpu_reference"), lambda: 0.0)
    add("vae_encoder_eager", "encoder", lambda: encoder_step(bench, None), lambda: eager_need)
    if main_mode is not None:
        add(f"vae_encoder_{main_mode}", "encoder", lambda: encoder_step(bench, main_mode),
            lambda: bench.compile_need_s(main_mode + "_encoder"))
    add("vae_encoder_onnx", "encoder", lambda: encoder_onnx_step(bench), lambda: eager_need)
    add("vae_encoder_tensorrt", "encoder", lambda: encoder_tensorrt_step(bench), lambda: bench.args.compile_reserve)
    add("dit_tensorrt_b1", "dit", lambda: dit_tensorrt_step(bench), lambda: bench.args.compile_reserve)
    # planning, and the policy beside it
    plan_mode = main_mode
    n = bench.args.plan_candidates
    add(f"plan_best_of_{n}_{plan_mode or 'eager'}", "plan", lambda: plan_step(bench, plan_mode),
        lambda: eager_need if plan_mode is None else bench.compile_need_s(plan_mode, n))
    add(f"chunk_beside_planner_{plan_mode or 'eager'}", "plan", lambda: chunk_beside_planner_step(bench, plan_mode),
        lambda: eager_need if plan_mode is None else bench.compile_need_s(plan_mode, 1))
    if main_mode is not None:
        add(f"dit_{main_mode}_b8", "dit", lambda: dit_step(bench, main_mode, 8),
            lambda: bench.compile_need_s(main_mode, 8))
    for mode in usable[1:]:
        add(f"dit_{mode}_b1", "dit", lambda m=mode: dit_step(bench, m, 1), lambda m=mode: bench.compile_need_s(m, 1))
    return steps


def summary(report: dict) -> dict:
    steps = report["steps"]

    def median(name: str) -> float | None:
        s = steps.get(name, {})
        return s.get("median_ms") if s.get("status") == "ok" else None

    out: dict = {"target_chunk_ms": TARGET_CHUNK_MS}
    for name, s in steps.items():
        if name.startswith("chunk_") and s.get("status") == "ok":
            out[f"{name}_ms"] = s["median_ms"]
    compiled = [v for k, v in out.items() if k.startswith("chunk_") and k.endswith("_1step_ms")
                and not k.startswith("chunk_eager")]
    best = min([v for k, v in out.items() if k.endswith("_1step_ms")], default=None)
    out["best_1step_chunk_ms"] = best
    out["meets_target"] = None if best is None else bool(best <= TARGET_CHUNK_MS)
    out["compiled_1step_chunk_ms"] = min(compiled, default=None)
    out["dit_eager_b1_ms"] = median("dit_eager_b1")
    return out


def print_table(report: dict) -> None:
    rows = [("step", "status", "median ms", "p90 ms", "n", "note")]
    for name, s in report["steps"].items():
        note = ""
        if s["status"] == "ok":
            if "compile_s" in s:
                note = f"compile {s['compile_s']:.1f} s"
                if s.get("counters", {}).get("inductor.cudagraph_skips"):
                    note += ", CUDA graphs skipped"
            if "staged_median_ms" in s:
                note += (" " if note else "") + "staged: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in s["staged_median_ms"].items())
            if s.get("truncated"):
                note += " (truncated by deadline)"
            rows.append((name, "ok", f"{s['median_ms']:.2f}", f"{s['p90_ms']:.2f}", str(s["n"]), note))
        else:
            why = s.get("error", s.get("reason", "")).splitlines()[0][:100] if s.get("error") or s.get("reason") else ""
            rows.append((name, s["status"], "-", "-", "-", why))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 or i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r[:5], widths)))
              + "  " + r[5], flush=True)
    summ = report["summary"]
    if summ.get("best_1step_chunk_ms") is not None:
        verdict = "met" if summ["meets_target"] else "NOT met"
        print(f"best 1-step chunk: {summ['best_1step_chunk_ms']:.1f} ms; target <= {TARGET_CHUNK_MS:.0f} ms "
              f"on an H100: {verdict} (device: {report['env'].get('device_name', report['env'].get('device'))})",
              flush=True)


# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--model", choices=sorted(MODELS), default="2b",
                    help="2b: ModelConfig.cosmos_predict2_2b + VAEConfig.wan21; tiny: both .tiny() (tests)")
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                    help="network dtype of DiT and VAE (auto: bf16 on cuda as the reference, fp32 on cpu)")
    ap.add_argument("--image-size", type=int, default=224, help="camera slot size of the ALOHA layout (224)")
    ap.add_argument("--compile-modes", default="reduce-overhead,default,max-autotune-no-cudagraphs",
                    help="torch.compile modes in priority order; the first usable one is also used for the chunk "
                         "steps and batch 8; 'none' for eager only")
    ap.add_argument("--chunk-steps", default="1,10", help="denoising steps per chunk to time (comma list)")
    ap.add_argument("--deadline", type=float, default=150.0,
                    help="seconds from start after which remaining steps are skipped (timed loops stop early)")
    ap.add_argument("--compile-reserve", type=float, default=45.0,
                    help="least time left to start a step that has to compile (the first measured compile time "
                         "raises it)")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed calls per step (default: {DEFAULT_REPEATS})")
    ap.add_argument("--plan-candidates", type=int, default=PLAN_CANDIDATES, help="best-of-N planning: N")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (compiled steps: at least 3)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_latency.json"))
    args = ap.parse_args(argv)
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    modes = [] if args.compile_modes.strip().lower() in ("", "none") else \
        [m.strip() for m in args.compile_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in COMPILE_MODES]
    if bad:
        raise SystemExit(f"unknown compile modes {bad}; choose from {COMPILE_MODES} or 'none'")
    chunk_steps = sorted({int(s) for s in args.chunk_steps.split(",") if s.strip()})

    rec = Recorder(args.out, args.deadline, {"args": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()}})
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[sig] = signal.signal(sig, rec.on_signal)
    try:
        return _run(args, rec, sections, modes, chunk_steps)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace, rec: Recorder, sections: set[str], modes: list[str],
         chunk_steps: list[int]) -> dict:
    rec.log(f"start: model {args.model}, device {args.device}, dtype {args.dtype}, sections {sorted(sections)}, "
            f"compile modes {modes or 'none'}, deadline {args.deadline:.0f} s -> {args.out}")
    device = torch.device(args.device)
    try:
        rec.report["env"] = environment(device)
    except Exception:  # noqa: BLE001
        rec.report["env"] = {"torch": torch.__version__, "device": str(device), "error": traceback.format_exc()}
    rec.report["env"]["pil"] = f"Pillow {importlib.metadata.version('pillow')}"
    rec.write()
    rec.log("env: " + ", ".join(f"{k}={rec.report['env'].get(k)}" for k in
                                ("torch", "torch_cuda", "device_name", "sm_count", "triton", "pil")))
    if device.type == "cuda" and not torch.cuda.is_available():
        rec.report["error"] = "device cuda requested but torch.cuda.is_available() is False"
        rec.report["finished"] = True
        rec.write()
        rec.log(rec.report["error"])
        return rec.report

    bench = Bench(args, rec)
    rec.report["config"] = {"model": bench.model_config.to_dict(), "vae": bench.vae_config.to_dict(),
                            "layout": bench.layout.to_dict(), "latent_shape": list(bench.layout.latent_shape),
                            "diffusion": bench.diffusion.to_dict()}
    try:
        for name, section, fn, need in plan(bench, sections, modes, chunk_steps):
            rec.run(name, section, fn, need())
    finally:
        shutil.rmtree(bench.work_dir, ignore_errors=True)
    rec.report["summary"] = summary(rec.report)
    rec.report["finished"] = True
    rec.write()
    print_table(rec.report)
    rec.log(f"wrote {args.out}")
    return rec.report


if __name__ == "__main__":
    main()
