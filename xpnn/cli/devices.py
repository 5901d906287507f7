"""``xpnn devices``: the array libraries' versions, the GPUs CuPy finds (each one checked with a
kernel, a matmul and a random draw), what ``--device auto`` picks, and which all-reduce a
data-parallel run on these GPUs would use."""
from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from .. import backend
from ..distributed.transports import nccl_unusable_reason
from ..files import json_text
from .environment import library_versions


def _gpus() -> list[dict[str, Any]]:
    if importlib.util.find_spec("cupy") is None:
        return []
    try:
        import cupy
        found = []
        for i in range(int(cupy.cuda.runtime.getDeviceCount())):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            with cupy.cuda.Device(i):
                free, total = cupy.cuda.runtime.memGetInfo()
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            try:  # the availability check: an element-wise kernel, a matmul and a random draw
                backend.resolve(f"gpu:{i}")
                usable = "ok"
            except backend.DeviceError as exc:
                usable = str(exc)
            found.append({"device": f"gpu:{i}", "name": name, "memory_total_gib": round(total / 2**30, 1),
                          "memory_free_gib": round(free / 2**30, 1), "usable": usable})
        return found
    except Exception:
        return []


def _allreduce(gpus: list[dict[str, Any]]) -> tuple[str, str]:
    """``("nccl" | "mpi" | "none", why)``: what a multi-GPU data-parallel run would all-reduce gradients with."""
    if not any(gpu["usable"] == "ok" for gpu in gpus):
        return "none", "no usable GPU; data-parallel runs on CPUs all-reduce through MPI"
    reason = nccl_unusable_reason()
    if reason is None:
        return "nccl", "CuPy's NCCL loads; one GPU per rank"
    return "mpi", f'NCCL unusable: {reason}; for NCCL: pip install "xpnn[gpu-dist]"'


def cmd_devices(args: argparse.Namespace) -> int:
    versions = library_versions()
    gpus = _gpus()
    reason = ""
    try:
        backend.resolve("gpu:0")
        auto = "gpu:0"
    except backend.DeviceError as exc:
        auto, reason = "cpu", str(exc).split(". ")[0]
    allreduce, allreduce_reason = _allreduce(gpus)
    if args.json:
        print(json_text({"versions": versions, "devices": backend.devices(), "gpus": gpus, "auto": auto,
                          "auto_reason": reason, "allreduce": allreduce, "allreduce_reason": allreduce_reason},
                        indent=1))
        return 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if "cupy" not in versions:
        print(f"CuPy: not installed (for NVIDIA GPUs: {backend.GPU_INSTALL_HINT})")
    print("devices:")
    print("  cpu     NumPy")
    for gpu in gpus:
        print(f"  {gpu['device']:<7} {gpu['name']}, {gpu['memory_total_gib']} GiB ({gpu['memory_free_gib']} GiB free): "
              f"{'kernel, matmul and random draw ran' if gpu['usable'] == 'ok' else 'UNUSABLE: ' + gpu['usable']}")
    print(f"--device auto picks: {auto}" + (f" ({reason})" if reason else ""))
    shown = {"nccl": "NCCL", "mpi": "MPI through host memory", "none": "none"}[allreduce]
    print(f"multi-GPU all-reduce: {shown} ({allreduce_reason})")
    return 0
