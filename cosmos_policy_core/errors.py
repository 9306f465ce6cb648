"""Exception types of the library: each says what was wrong and what to do about it."""


class CosmosAlohaError(Exception):
    """Base class for user-facing errors (the CLI prints them without a traceback).

    `exit_code` is what `cosmos-aloha` exits with: 2 when the input is wrong (an argument, a file), so that
    running again unchanged fails again; 1 when something failed while running.
    """

    exit_code = 1


class CheckpointError(CosmosAlohaError):
    """A checkpoint, statistics file or text-embedding file is missing, corrupt or mismatched."""

    exit_code = 2


class ConfigError(CosmosAlohaError):
    """A configuration or parameter value is invalid."""

    exit_code = 2


class DataError(CosmosAlohaError):
    """An episode, bag or dataset file is unreadable or inconsistent."""

    exit_code = 2


class ShapeError(CosmosAlohaError, ValueError):
    """An array has the wrong shape or dimension."""

    exit_code = 2
