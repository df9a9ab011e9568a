"""One exception root for polyhead; subclasses also subclass the builtin a caller expects."""


class PolyheadError(Exception):
    """Root of every error polyhead raises on purpose; messages name the bad value and the fix."""


class ConfigError(PolyheadError, ValueError):
    """A configuration file or option is invalid."""


class DataError(PolyheadError, ValueError):
    """A dataset file (COCO annotations, images) is malformed."""


class ContractError(PolyheadError, ValueError):
    """A trunk or head does not satisfy the feature contract."""


class InputError(PolyheadError, TypeError):
    """An input tensor or image has the wrong type, dtype or shape."""


class ArtifactError(PolyheadError, ValueError):
    """A model file or metadata on disk is missing, corrupt or inconsistent."""


class ServingError(PolyheadError, RuntimeError):
    """The Triton server cannot start, load a model or answer a request."""
