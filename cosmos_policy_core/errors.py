"""Exception types of the library: each says what was wrong and what to do about it."""


class CosmosAlohaError(Exception):
    """Base class for user-facing errors (the CLI prints them without a traceback)."""


class CheckpointError(CosmosAlohaError):
    """A checkpoint, statistics file or text-embedding file is missing, corrupt or mismatched."""


class ConfigError(CosmosAlohaError):
    """A configuration or parameter value is invalid."""


class DataError(CosmosAlohaError):
    """An episode, bag or dataset file is unreadable or inconsistent."""


class ShapeError(CosmosAlohaError, ValueError):
    """An array has the wrong shape or dimension."""
