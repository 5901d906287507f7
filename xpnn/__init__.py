"""xpnn: small, fast, honest neural networks on any array-API library (NumPy, CuPy, ...)."""
from . import layers
from .backend import (Device, DeviceError, current_device, devices, get_device, seed, set_device, to_device,
                      to_numpy, use_device)

__version__ = "0.1.0"

__all__ = ["layers", "Device", "DeviceError", "set_device", "get_device", "current_device", "use_device",
           "devices", "to_device", "to_numpy", "seed", "__version__"]
