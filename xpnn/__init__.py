"""xpnn: small, fast, honest neural networks on any array-API library (NumPy, CuPy, ...)."""
__version__ = "0.1.0"

from . import datasets, layers, losses, optim  # noqa: E402
from .backend import (Device, DeviceError, current_device, devices, get_device, seed, set_device,  # noqa: E402
                      to_device, to_numpy, use_device)
from .io import load, load_checkpoint, save  # noqa: E402
from .model import Sequential, mlp  # noqa: E402
from .train import Callback, EarlyStopping, History, ModelCheckpoint  # noqa: E402

__all__ = ["datasets", "layers", "losses", "optim", "Device", "DeviceError", "set_device", "get_device", "current_device",
           "use_device", "devices", "to_device", "to_numpy", "seed", "Sequential", "mlp", "save", "load",
           "load_checkpoint", "History", "Callback", "EarlyStopping", "ModelCheckpoint", "__version__"]
from .onnx_export import export_onnx  # noqa: E402

__all__ += ["export_onnx"]
