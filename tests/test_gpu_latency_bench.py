"""benchmarks/gpu_latency.py end to end on the CPU with the tiny preset: every section measured, failures and the deadline recorded."""
from __future__ import annotations

import json
import math

import pytest

TINY_CPU = ["--model", "tiny", "--device", "cpu", "--image-size", "64", "--repeats", "1", "--warmup", "0",
            "--compile-modes", "none", "--chunk-steps", "1"]


@pytest.fixture
def bench_module(load_benchmark):
    return load_benchmark("gpu_latency")


def test_tiny_cpu_run_measures_every_section_and_records_a_failing_step(bench_module, tmp_path, monkeypatch):
    def broken_decode(bench):
        raise RuntimeError("decode exploded")

    monkeypatch.setattr(bench_module, "vae_decode_step", broken_decode)
    out = tmp_path / "gpu_latency.json"
    bench_module.main([*TINY_CPU, "--sections", "dit,vae,chunk", "--out", str(out)])

    report = json.loads(out.read_text())
    assert report["finished"] is True
    env = report["env"]
    assert env["torch"] and env["device"] == "cpu" and env["cpu_count"] >= 1
    steps = report["steps"]
    # the broken step is recorded with its traceback, and the steps after it still ran
    assert steps["vae_decode_fp32"]["status"] == "error"
    assert "decode exploded" in steps["vae_decode_fp32"]["traceback"]
    assert steps["chunk_eager_1step"]["status"] == "ok"
    for section in ("dit", "vae", "chunk"):
        ok = [s for s in steps.values() if s["section"] == section and s["status"] == "ok"]
        assert ok, f"no successful {section} step: {steps}"
        for s in ok:
            assert math.isfinite(s["median_ms"]) and s["median_ms"] > 0
            assert math.isfinite(s["p90_ms"]) and s["p90_ms"] >= s["median_ms"] and s["n"] == 1
    assert steps["dit_eager_b8"]["latent_shape"] == [8, 16, 11, 8, 8] and steps["dit_eager_b8"]["output_finite"]
    assert steps["vae_encode_fp32"]["latent_shape"] == [1, 16, 11, 8, 8]
    chunk = steps["chunk_eager_1step"]
    assert set(chunk["act_timings_median_ms"]) == {"preprocess", "vae_encode", "denoise", "decode", "postprocess"}
    assert chunk["act_timings_median_ms"]["decode"] < 1.0  # ms: the chunk path does not decode predicted frames
    assert all(v > 0 for v in chunk["staged_median_ms"].values())
    assert report["summary"]["best_1step_chunk_ms"] == chunk["median_ms"]


def test_past_the_deadline_every_step_is_skipped_and_written(bench_module, tmp_path):
    out = tmp_path / "late.json"
    bench_module.main([*TINY_CPU, "--deadline", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["steps"] and all(s["status"] == "skipped" and "deadline" in s["reason"]
                                   for s in report["steps"].values())
    assert report["summary"]["best_1step_chunk_ms"] is None and report["summary"]["meets_target"] is None



def test_tiny_cpu_run_measures_the_fast_path_encoder_and_preprocessing(bench_module, tmp_path):
    out = tmp_path / "encoder.json"
    bench_module.main([*TINY_CPU, "--sections", "encoder", "--deadline", "600", "--out", str(out)])
    steps = json.loads(out.read_text())["steps"]
    for name in ("preprocess_policy", "preprocess_cpu_reference"):
        assert steps[name]["status"] == "ok" and steps[name]["frame_shape"] == [480, 640, 3]
    assert steps["preprocess_cpu_reference"]["max_pixel_diff_vs_cpu_reference"] == 0
    for name in ("vae_encoder_eager", "vae_encoder_onnx"):
        step = steps[name]
        assert step["status"] == "ok", step
        assert (step["frames"], step["prefix_frames"], step["latent_shape"]) == (17, 5, [1, 16, 5, 8, 8])
        assert step["max_abs_diff_vs_eager_vae"] < 1e-4
    assert steps["vae_encoder_tensorrt"]["status"] == "skipped" and "TensorRT" in steps["vae_encoder_tensorrt"]["reason"]


@pytest.mark.slow
def test_tiny_cpu_run_measures_planning_and_the_chunk_beside_it(bench_module, tmp_path):
    out = tmp_path / "plan.json"
    bench_module.main([*TINY_CPU, "--sections", "plan", "--plan-candidates", "2", "--deadline", "900",
                       "--out", str(out)])
    steps = json.loads(out.read_text())["steps"]
    plan = steps["plan_best_of_2_eager"]
    assert plan["status"] == "ok" and plan["num_candidates"] == 2 and plan["scored"] == [2]
    beside = steps["chunk_beside_planner_eager"]
    assert beside["status"] == "ok", beside
    assert beside["alone_median_ms"] > 0 and beside["median_ms"] > 0 and beside["planner_mode"] == "eager"
