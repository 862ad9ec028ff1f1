"""Cleanse's error types. Each one means 'this input cannot be scanned': the CLI prints its one-line
message and exits 2, never a traceback."""


class InputError(Exception):
    """Base: bad input of any kind."""


class ModelError(InputError):
    """A model file that is missing, malformed, not an image classifier, or uses ops we cannot convert."""


class DataError(InputError):
    """Clean data that is missing, malformed, or does not fit the model."""


class ConfigError(InputError):
    """Options or a config file that make no sense."""


class ResourceError(InputError):
    """Work that does not fit this machine (a model that does not fit in GPU memory even one label a pass)."""
