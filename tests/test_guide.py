"""Every `cosmos-aloha …` command in the guide, the docs and the README exists: `--help` works for its
subcommand and the command line as written parses with the real CLI (flags included)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cosmos_policy_core.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands(path: Path) -> list[str]:
    """`cosmos-aloha` command lines inside fenced code blocks (comments and continuations handled)."""
    commands, in_fence, pending = [], False, ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("```"):
            in_fence, pending = not in_fence, ""
            continue
        if not in_fence:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.sub(r"\s+#.*$", "", line)
        if line.startswith("cosmos-aloha"):
            commands.append(line)
    return commands


def _all_commands() -> list[tuple[str, str]]:
    return [(p.name, c) for p in DOCS for c in documented_commands(p)]


def test_the_guide_has_commands():
    guide = documented_commands(REPO / "docs" / "guide.md")
    assert len(guide) >= 15, guide


@pytest.mark.parametrize("source,command", _all_commands())
def test_documented_command_exists_and_parses(source, command, capsys):
    # usage notation: optional groups `[--flag V]` are checked as if given, `...` means "more of the same"
    argv = [w for w in shlex.split(command.replace("[", " ").replace("]", " "))[1:] if w != "..."]
    parser = build_parser()
    words = [w for w in argv if not w.startswith("-")]
    # --help on the subcommand path (the leading words that name subcommands)
    path: list[str] = []
    for word in words:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*path, word, "--help"])
        if exit_info.value.code != 0:
            break
        path.append(word)
        if "positional arguments" not in capsys.readouterr().out:
            break
    assert path, f"{source}: `{command}` names no cosmos-aloha subcommand"
    args = parser.parse_args(argv)  # SystemExit(2) on an unknown flag or a missing argument
    assert getattr(args, "func", None) is not None, f"{source}: `{command}` is not a runnable command"
