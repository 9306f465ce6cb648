"""Writing a dataset as one transaction: its episodes, stats.json, tasks.json and report.json appear together or not
at all, and an interrupted or failed conversion leaves the previous dataset in the output exactly as it was.

Every converter (bags, ALOHA HDF5, LeRobot) hands its episodes to a `DatasetWriter`:

    with DatasetWriter(out, inputs=paths, fps=25.0, overwrite=args.overwrite) as writer:
        for source in paths:
            try:
                writer.add(convert(source))           # a ConvertedEpisode; bad ones are skipped and reported
            except DataError as exc:
                writer.skip(str(source), exc)         # an input that could not be read at all
        report = writer.commit()                      # swaps the new dataset in; report.committed says if it did

Episodes are written into `.<out>.tmp-<pid>` beside the output; `commit()` swaps that directory in. Leaving the
`with` block without committing (an error, Ctrl-C) removes it; a killed process's is removed by the next writer.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cosmos_policy_core import atomic
from cosmos_policy_core.data.episode import Episode, check_joint_ranges, write_episode_hdf5
from cosmos_policy_core.data.report import ConversionReport, EpisodeRecord, SkippedRecord
from cosmos_policy_core.data.stats import StatsAccumulator, write_stats
from cosmos_policy_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# What a dataset directory holds; an output holding anything else is not replaced (it is not a dataset).
DATASET_FILES = ("stats.json", "tasks.json", "report.json")
DATASET_PATTERNS = ("episode_*.hdf5", "episode_*.png")


@dataclass
class ConvertedEpisode:
    """One converted episode and what its source looked like (for the report)."""

    episode: Episode
    source: str
    source_steps: int = 0
    dropped_frames: int = 0
    duplicated_frames: int = 0
    max_skew_ms: float = 0.0
    rates_hz: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_output_apart_from_inputs(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is an input, lies inside one, or holds one: replacing it would delete inputs."""
    target = Path(out).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if target == source or source in target.parents:
            raise ConfigError(f"--out {out} is {'the input' if target == source else 'inside the input'} {item}; "
                              "the conversion replaces its output, so choose a directory outside the inputs")
        if target in source.parents:
            raise ConfigError(f"the input {item} lies inside --out {out}; the conversion replaces its output, so "
                              "choose a directory that holds no input")


def _foreign_entries(out: Path) -> list[str]:
    """Names in `out` that a dataset does not hold."""
    ours = set(DATASET_FILES)
    for pattern in DATASET_PATTERNS:
        ours.update(p.name for p in out.glob(pattern))
    return sorted(p.name for p in out.iterdir() if p.name not in ours or not p.is_file())


class DatasetWriter:
    """Writes converted episodes as `episode_<i>.hdf5` with stats.json, tasks.json and report.json, all at once.

    `add` skips (and reports) an episode whose joints lie outside the robot's range; `skip` records an input
    that could not be converted; `commit` computes the statistics and swaps the dataset into `out`. With no
    episode converted nothing is swapped: `out` keeps what it held and the report says so.
    """

    def __init__(self, out: str | Path, inputs: Iterable[str | Path] = (), fps: float = 25.0,
                 compress: bool = False, overwrite: bool = False):
        self.out = Path(out)
        check_output_apart_from_inputs(self.out, inputs)
        atomic.remove_stale(self.out)
        if self.out.exists():
            if not self.out.is_dir():
                raise ConfigError(f"--out {self.out} is a file; choose a directory for the dataset")
            existing = sorted(self.out.glob("episode_*.hdf5"))
            if existing and not overwrite:
                raise ConfigError(f"{self.out} already holds {len(existing)} episodes; choose a new --out or pass "
                                  "--overwrite")
            foreign = _foreign_entries(self.out)
            if foreign:
                raise ConfigError(f"{self.out} holds {foreign[:5]}{' ...' if len(foreign) > 5 else ''}, which are "
                                  "not dataset files; the conversion replaces its output, so choose a new or "
                                  "empty directory")
        self.compress = compress
        self.report = ConversionReport(output=str(self.out), fps=fps)
        self.stats = StatsAccumulator()
        self.tasks: list[dict] = []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = atomic.temp_path(self.out)
        self.tmp.mkdir()
        self._open = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def add(self, item: ConvertedEpisode) -> bool:
        """Write one episode; False (and a skip in the report) when it fails the checks."""
        ep = item.episode
        try:
            ep.validate(item.source)
            check_joint_ranges(ep.qpos, ep.action, item.source)
        except DataError as exc:
            self.skip(item.source, exc)
            return False
        name = f"episode_{len(self.report.episodes)}.hdf5"
        write_episode_hdf5(self.tmp / name, ep, compress=self.compress)
        self.stats.add(ep.qpos, ep.action, ep.success)
        self.tasks.append({"file": name, "task": ep.task, "success": bool(ep.success), "length": len(ep),
                           "source": item.source})
        self.report.episodes.append(EpisodeRecord(
            file=name, source=item.source, task=ep.task, success=bool(ep.success), length=len(ep),
            source_steps=item.source_steps, dropped_frames=item.dropped_frames,
            duplicated_frames=item.duplicated_frames, max_skew_ms=round(item.max_skew_ms, 3),
            rates_hz=item.rates_hz, warnings=list(item.warnings),
        ))
        return True

    def add_from(self, source: str, items: Iterable[ConvertedEpisode | DataError]) -> None:
        """Write every episode one input (a bag, a LeRobot dataset) yields. A DataError it yields is an episode
        skipped and reported; one it raises ends that input, reported, and the conversion goes on."""
        try:
            for item in items:
                if isinstance(item, DataError):
                    self.skip(source, item)
                else:
                    self.add(item)
        except DataError as exc:
            self.skip(source, exc)

    def skip(self, source: str, error: Exception) -> None:
        log.warning("skipped %s", error)
        self.report.skipped.append(SkippedRecord(source=source, reason=str(error)))

    def commit(self) -> ConversionReport:
        """Statistics, tasks and report written, then the whole dataset swapped into `out` in one rename."""
        if not self._open:
            raise ConfigError("this DatasetWriter has already committed or been aborted")
        if not self.report.episodes:
            self.report.notes.append(f"no episode was converted: nothing written, {self.out} left as it was")
            self.abort()
            return self.report
        if self.stats.episodes:
            write_stats(self.tmp / "stats.json", self.stats.result())
        else:
            self.report.notes.append("no successful episode, so stats.json was not written")
        unique = sorted({t["task"] for t in self.tasks})
        (self.tmp / "tasks.json").write_text(json.dumps({"tasks": unique, "episodes": self.tasks}, indent=2))
        self.report.committed = True
        self.report.save(self.tmp / "report.json")
        atomic.replace_dir(self.tmp, self.out)
        self._open = False
        log.info("wrote dataset %s (%d episodes)", self.out, len(self.report.episodes))
        return self.report

    def abort(self) -> None:
        """Discard what was written; `out` keeps what it held. Does nothing after `commit`."""
        if self._open:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._open = False
