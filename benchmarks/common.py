"""What the benchmarks share: the command-line options every one takes, and PyTorch if present."""
from __future__ import annotations

import argparse
from typing import Any


def parser(doc: str | None, repeats: int = 5) -> argparse.ArgumentParser:
    """An argument parser with ``--device``, ``--repeats`` and ``--threads``."""
    made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--device", default="cpu", help="cpu (NumPy vs torch CPU) or gpu:0 (CuPy vs torch CUDA)")
    made.add_argument("--repeats", type=int, default=repeats, help="timed runs per library and workload (median shown)")
    made.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return made


def import_torch(threads: int) -> tuple[Any, str]:
    """``(torch, version)`` with torch limited to ``threads`` threads, or ``(None, "not installed")``."""
    try:
        import torch
    except ImportError:
        return None, "not installed"
    torch.set_num_threads(threads)
    return torch, torch.__version__
