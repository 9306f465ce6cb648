#!/usr/bin/env python3
"""Writes docker/constraints.txt: exact versions, from this environment, of everything the docker image's extras install.

The image installs with these constraints (PIP_CONSTRAINT), so it gets the versions the test suite ran with. Run it
from the project's virtual environment after changing dependencies, then rebuild the image:

    .venv/bin/python scripts/pin_image_requirements.py          # extras: see IMAGE_EXTRAS
Packages this environment lacks (tensorrt: the GPU machine's) keep the ranges pyproject.toml gives them.
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = "cosmos-aloha"
IMAGE_EXTRAS = ("sim", "data", "hw", "onnx", "trt")   # docker/Dockerfile installs these (EXTRAS=...)
# The image's torch comes from the CUDA index (TORCH_SPEC in docker/Dockerfile), with the CUDA libraries it pins.
NOT_PINNED = {"torch"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: metadata.Distribution, extras: set[str]) -> list[tuple[str, set[str]]]:
    """(name, its extras) of a distribution's requirements that apply with `extras` on this platform."""
    from packaging.requirements import Requirement

    out = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None:
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if not any(req.marker.evaluate(env) for env in envs):
                continue
        out.append((req.name, set(req.extras)))
    return out


def closure(extras: tuple[str, ...]) -> dict[str, str]:
    """Canonical name -> installed version of every package the project's extras pull in (installed ones only)."""
    pinned: dict[str, str] = {}
    todo = [(PROJECT, set(extras))]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, want = todo.pop()
        key = (canonical(name), frozenset(want))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if canonical(name) != PROJECT:
            pinned[canonical(name)] = dist.version
        todo.extend(_requirements(dist, want))
    return pinned


def render(pins: dict[str, str]) -> str:
    head = ("# Written by scripts/pin_image_requirements.py from the environment the tests ran in; the docker image\n"
            "# installs with it (PIP_CONSTRAINT). Regenerate it after changing dependencies.\n")
    lines = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in NOT_PINNED]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docker" / "constraints.txt")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    args = ap.parse_args(argv)
    text = render(closure(IMAGE_EXTRAS))
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'out of date: run scripts/pin_image_requirements.py'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out} ({text.count(chr(10)) - 2} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
