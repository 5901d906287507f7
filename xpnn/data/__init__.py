"""Host-side data: loading files, batching, moving batches to the device."""
from .loader import DataLoader

__all__ = ["DataLoader"]
