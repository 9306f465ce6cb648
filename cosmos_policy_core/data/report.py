"""The validation report of a dataset conversion: what was converted, its timing quality, what was skipped.

Saved as `report.json` next to the episodes; `summary()` is what the CLI prints.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EpisodeRecord:
    file: str
    source: str
    task: str
    success: bool
    length: int                     # steps at the output rate
    source_steps: int = 0           # messages / steps the source had for this episode (largest stream)
    dropped_frames: int = 0         # messages missing from the source streams (gaps)
    duplicated_frames: int = 0      # ticks that reuse the previous tick's message
    max_skew_ms: float = 0.0        # largest stamp spread between cameras and joints at one tick
    rates_hz: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class SkippedRecord:
    source: str
    reason: str


@dataclass
class ConversionReport:
    output: str
    fps: float
    episodes: list[EpisodeRecord] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    committed: bool = False         # the dataset was swapped into `output` (False: `output` left as it was)

    def to_dict(self) -> dict:
        lengths = [e.length for e in self.episodes]
        return {
            "output": self.output,
            "committed": self.committed,
            "fps": self.fps,
            "episode_count": len(self.episodes),
            "successful_episodes": sum(e.success for e in self.episodes),
            "skipped_count": len(self.skipped),
            "total_steps": int(sum(lengths)),
            "length_min": int(min(lengths)) if lengths else 0,
            "length_max": int(max(lengths)) if lengths else 0,
            "length_mean": float(np.mean(lengths)) if lengths else 0.0,
            "dropped_frames": int(sum(e.dropped_frames for e in self.episodes)),
            "duplicated_frames": int(sum(e.duplicated_frames for e in self.episodes)),
            "max_skew_ms": float(max((e.max_skew_ms for e in self.episodes), default=0.0)),
            "episodes": [asdict(e) for e in self.episodes],
            "skipped": [asdict(s) for s in self.skipped],
            "notes": list(self.notes),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def summary(self) -> str:
        d = self.to_dict()
        where = f"to {self.output}" if self.committed else f"(nothing written; {self.output} left as it was)"
        lines = [
            f"converted {d['episode_count']} episodes ({d['successful_episodes']} successful) {where} "
            f"at {self.fps:g} Hz, {d['skipped_count']} skipped",
            f"lengths: min {d['length_min']}, max {d['length_max']}, mean {d['length_mean']:.1f} "
            f"(total {d['total_steps']} steps)",
            f"dropped frames {d['dropped_frames']}, duplicated frames {d['duplicated_frames']}, "
            f"max time skew {d['max_skew_ms']:.1f} ms",
        ]
        for e in self.episodes:
            lines.append(
                f"  {e.file}: {e.length} steps, task {e.task!r}, success {e.success}, dropped {e.dropped_frames}, "
                f"duplicated {e.duplicated_frames}, skew {e.max_skew_ms:.1f} ms  <- {e.source}"
            )
            lines.extend(f"    warning: {w}" for w in e.warnings)
        for s in self.skipped:
            lines.append(f"  SKIPPED {s.source}: {s.reason}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
