"""Learning-rate schedule of the reference: cycles of linear warm-up then linear decay (`LambdaLinearScheduler`).

Base ALOHA: cycle 1 = 20,000 steps, warm-up 2,000 from f = 1e-6 to 1, decay to 0.3; cycle 2 constant 0.06 forever.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

from cosmos_policy_core.errors import ConfigError


@dataclass(frozen=True)
class LRSchedule:
    """Per cycle: warm-up steps, length, and the factors f_start (warm-up start), f_max, f_min (cycle end).

    The last cycle extends forever (its factor stays at f_min after its length). Step n lies in cycle
    c when cum[c] < n <= cum[c+1] (step 0 in cycle 0), as in the reference.
    """

    warmup_steps: tuple[int, ...] = (2000, 0)
    cycle_lengths: tuple[int, ...] = (20000, 10**12)
    f_start: tuple[float, ...] = (1e-6, 0.06)
    f_max: tuple[float, ...] = (1.0, 0.06)
    f_min: tuple[float, ...] = (0.3, 0.06)

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "cycle_lengths", "f_start", "f_max", "f_min"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.cycle_lengths)
        if n == 0 or any(len(getattr(self, k)) != n for k in ("warmup_steps", "f_start", "f_max", "f_min")):
            raise ConfigError("LRSchedule needs the same (non-zero) number of entries for every per-cycle field")
        for w, length in zip(self.warmup_steps, self.cycle_lengths):
            if length <= 0 or not 0 <= w <= length:
                raise ConfigError(f"every cycle needs length > 0 and 0 <= warm-up <= length, got {w} / {length}")

    @classmethod
    def reference(cls) -> "LRSchedule":
        """Base ALOHA policy: 2000 warm-up, 20,000-step first cycle, then constant 0.06."""
        return cls()

    @classmethod
    def two_cycle(cls, warmup: int, cycle: int, f_start: float = 1e-6, f_end: float = 0.3,
                  f_after: float = 0.06) -> "LRSchedule":
        """The reference's shape with other lengths (e.g. the planning model: warm-up 1500, cycle 15,000)."""
        return cls((warmup, 0), (cycle, 10**12), (f_start, f_after), (1.0, f_after), (f_end, f_after))

    def factor(self, step: int) -> float:
        """LR multiplier at optimizer step `step` (0-based)."""
        if step < 0:
            raise ConfigError(f"step must be >= 0, got {step}")
        start = 0
        cycle = len(self.cycle_lengths) - 1
        for c, length in enumerate(self.cycle_lengths):
            if step <= start + length:
                cycle = c
                break
            start += length
        n = step - start
        w, length = self.warmup_steps[cycle], self.cycle_lengths[cycle]
        f_start, f_max, f_min = self.f_start[cycle], self.f_max[cycle], self.f_min[cycle]
        if n < w:
            return (f_max - f_start) / w * n + f_start
        if n >= length:
            return f_min
        return f_min + (f_max - f_min) * (length - n) / (length - w)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LRSchedule":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"LR schedule has unknown keys {sorted(unknown)}")
        return cls(**{k: tuple(v) for k, v in data.items()})


__all__ = ["LRSchedule"]
