"""`cosmos-aloha` command line: one module per subcommand group in this package.

Each module defines `register(subparsers)` and sets `func` on the parsers it adds; modules are
discovered, so adding a command never edits this file.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

EXIT_CODES = """exit codes:
  0  success
  1  a failure while running (hardware, a run that did not reach its goal, the disk); see the message
  2  bad usage or bad input: an argument, or a checkpoint, config, statistics, bag or episode file that is
     missing or malformed; the message names the file and what is wrong, and rerunning unchanged fails again
  130  interrupted (Ctrl-C)"""
EXIT_CODES_SHORT = "exit codes: 0 success, 1 failure while running, 2 bad usage or bad input (cosmos-aloha --help)"


# Commands whose start-up time matters: built alone, without the other commands' imports (numpy, ...).
ALONE = ("estop",)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or just the command `only` (one of ALONE)."""
    parser = argparse.ArgumentParser(
        prog="cosmos-aloha",
        description="Cosmos Policy on the bimanual ALOHA: sim, data, training, export, bringup.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if only is not None and info.name != only:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    _add_exit_codes(parser)
    return parser


def _add_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's --help ends with the exit codes."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.epilog = sub.epilog or EXIT_CODES_SHORT
                _add_exit_codes(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in ALONE else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CosmosAlohaError as exc:  # expected, user-facing failures: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the disk or the OS refused (full, permissions): the message says which file
        print(f"error: {exc}", file=sys.stderr)
        return 1


from cosmos_policy_core.errors import CosmosAlohaError  # noqa: E402  (after main for readability)

if __name__ == "__main__":
    sys.exit(main())
