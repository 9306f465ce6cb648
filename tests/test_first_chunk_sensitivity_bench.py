"""benchmarks/first_chunk_sensitivity.py: which input a chunk follows, on fake policies whose answer is known."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cosmos_policy_core.errors import ConfigError


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("first_chunk_sensitivity")


class Demo(SimpleNamespace):
    def __len__(self):
        return len(self.action)


def demos(n: int = 5, T: int = 30) -> list[Demo]:
    """n demos with random commands; every joint position of demo i is i (so the joints name the scene)."""
    rng = np.random.default_rng(0)
    return [Demo(name=f"episode_{i}", action=rng.normal(size=(T, 14)), qpos=np.full((T, 14), float(i)))
            for i in range(n)]


def test_a_policy_that_reads_the_joints_follows_the_joints_scene(bench):
    eps = demos()
    by_scene = {float(ep.qpos[0, 0]): ep for ep in eps}

    def from_joints(ep, step, proprio):
        return by_scene[float(proprio[0])].action[step:step + 20]

    (row,) = bench.measure(from_joints, eps, [3], 20, [7, 8], log=lambda _: None)
    assert row["r2"] == pytest.approx(1.0) and row["r2_swapped_vs_proprio"] == pytest.approx(1.0)
    assert row["r2_swapped_vs_images"] < 0
    assert row["spread"] == pytest.approx(row["demo_spread"])


def test_a_policy_that_reads_the_images_follows_the_images_scene(bench):
    eps = demos()
    (row,) = bench.measure(lambda ep, step, proprio: ep.action[step:step + 20], eps, [0], 20, [7], log=lambda _: None)
    assert row["r2"] == pytest.approx(1.0) and row["r2_swapped_vs_images"] == pytest.approx(1.0)
    assert row["r2_swapped_vs_proprio"] < 0


def test_a_blind_policy_scores_zero_and_no_spread(bench):
    eps = demos()
    mean = np.mean([ep.action[:20] for ep in eps], axis=0)
    (row,) = bench.measure(lambda ep, step, proprio: mean, eps, [0], 20, [7, 8, 9, 10], log=lambda _: None)
    assert row["r2"] == pytest.approx(0.0, abs=1e-9) and row["spread"] == 0.0 and row["demo_spread"] > 0.5


def test_steps_past_the_end_are_refused(bench):
    with pytest.raises(ConfigError, match="shorter than step 15"):
        bench.measure(lambda ep, step, proprio: ep.action[step:step + 20], demos(T=30), [15], 20, [7],
                      log=lambda _: None)
