"""xpnn's exception classes: each names what was expected and what was received."""
from __future__ import annotations

from .backend import DeviceError

__all__ = ["ShapeError", "DataError", "TrainingDivergedError", "ModelFileError", "DeviceError", "DistributedError",
           "OutOfMemoryError", "PrecisionUnavailableError"]


class ShapeError(ValueError):
    """An array has the wrong rank or size for the layer, loss or argument it was given to."""


class DataError(ValueError):
    """Inputs or labels are unusable: empty, NaN/inf, labels out of range, lengths that differ."""


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or inf; the message names the epoch and batch."""


class ModelFileError(ValueError):
    """A model file is corrupt, from a newer format, or does not match the architecture."""


class DistributedError(RuntimeError):
    """Ranks disagree (model, data) or the requested communication backend is unusable."""


class OutOfMemoryError(MemoryError):
    """Training ran out of device memory; the message gives the batch size, the memory estimate,
    the device's free memory and a batch size that fits."""


class PrecisionUnavailableError(ValueError):
    """A dtype policy cannot run here (bfloat16 without ml_dtypes, 16-bit floats on array-api-strict,
    bfloat16 on CuPy 13); the message names what to install or use instead."""
