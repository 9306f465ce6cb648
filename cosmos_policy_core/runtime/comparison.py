"""Paired comparison of two `sim eval` reports on the same seeds (e.g. with and without planning): both success
rates with Wilson intervals, the scenes solved by one run only, and the exact McNemar test on those.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

from cosmos_policy_core.errors import ConfigError
from cosmos_policy_core.runtime.rollout import wilson_interval


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under no difference each discordant scene is a fair coin, so the
    smaller count is binomial(n = only_a + only_b, 1/2); p = min(1, 2 P(X <= min)). 1 with no discordant scene."""
    if only_a < 0 or only_b < 0:
        raise ConfigError(f"discordant counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


@dataclass
class RunSummary:
    label: str
    successes: int
    episodes: int
    rate: float
    ci95: tuple[float, float]


@dataclass
class PairedComparison:
    a: RunSummary
    b: RunSummary
    seeds: int
    both: int
    only_a: int
    only_b: int
    neither: int
    difference: float          # rate of b minus rate of a, on the shared seeds
    mcnemar_p: float

    def to_json_dict(self) -> dict:
        out = asdict(self)
        for run in ("a", "b"):
            out[run]["ci95"] = list(out[run]["ci95"])
        return out

    def lines(self) -> list[str]:
        out = []
        for run in (self.a, self.b):
            lo, hi = run.ci95
            out.append(f"{run.label}: {run.successes}/{run.episodes} successes, rate {run.rate:.1%} "
                       f"(95% Wilson CI {lo:.1%}-{hi:.1%})")
        out.append(f"paired on {self.seeds} seeds: solved by both {self.both}, only by {self.a.label} {self.only_a}, "
                   f"only by {self.b.label} {self.only_b}, by neither {self.neither}")
        out.append(f"difference {self.b.label} - {self.a.label}: {self.difference:+.1%} "
                   f"(exact McNemar p = {self.mcnemar_p:.3g})")
        return out


def _successes_by_seed(report: Mapping, name: str) -> dict[int, bool]:
    episodes = report.get("per_episode") if isinstance(report, Mapping) else None
    if not isinstance(episodes, list) or not episodes:
        raise ConfigError(f"{name} has no per_episode table; pass the file `sim eval --json` wrote")
    out = {}
    for e in episodes:
        try:
            seed, success = int(e["seed"]), bool(e["success"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{name}: a per_episode entry lacks seed / success: {str(e)[:80]}") from None
        if seed in out:
            raise ConfigError(f"{name} holds seed {seed} twice; compare one run per file")
        out[seed] = success
    return out


def compare_reports(a: Mapping, b: Mapping, label_a: str = "A", label_b: str = "B") -> PairedComparison:
    """Compare two `sim eval --json` reports scene by scene; they must hold the same task and seeds."""
    if a.get("task") != b.get("task"):
        raise ConfigError(f"{label_a} evaluates {a.get('task')!r} and {label_b} {b.get('task')!r}; compare runs of "
                          "one task")
    sa, sb = _successes_by_seed(a, label_a), _successes_by_seed(b, label_b)
    if sa.keys() != sb.keys():
        only = sorted(sa.keys() - sb.keys())[:5], sorted(sb.keys() - sa.keys())[:5]
        raise ConfigError(f"{label_a} and {label_b} ran different seeds (only in {label_a}: {only[0]}, only in "
                          f"{label_b}: {only[1]}, first 5 each); run both with the same --seed and --episodes")
    seeds = sorted(sa)
    both = sum(sa[s] and sb[s] for s in seeds)
    only_a = sum(sa[s] and not sb[s] for s in seeds)
    only_b = sum(sb[s] and not sa[s] for s in seeds)
    n = len(seeds)

    def summary(label: str, wins: dict[int, bool]) -> RunSummary:
        k = sum(wins.values())
        return RunSummary(label, k, n, k / n, wilson_interval(k, n))

    return PairedComparison(summary(label_a, sa), summary(label_b, sb), n, both, only_a, only_b,
                            n - both - only_a - only_b, (only_b - only_a) / n, mcnemar_exact(only_a, only_b))


__all__ = ["mcnemar_exact", "RunSummary", "PairedComparison", "compare_reports"]
