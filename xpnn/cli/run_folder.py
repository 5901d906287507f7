"""The run folder ``xpnn train`` writes: which folder (a new runs/<time>, --out or --resume),
the checkpoint after every epoch, the history files and plots, and run.json, the record of
the run (command, device, settings, data), written when it ends however it ends."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import backend
from ..files import write_json
from ..train import History, ModelCheckpoint
from .errors import CLIError
from .reporting import write_report

MODEL_FILE, CHECKPOINT_FILE = "model.npz", "checkpoint.npz"


def _new_out_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = Path("runs") / stamp, 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{stamp}-{n}"
    return out


def output_folder(args: argparse.Namespace) -> Path:
    """The run folder: the one resumed (which must hold a checkpoint), --out, or a new runs/<time>."""
    if args.resume:
        resume = Path(args.resume)
        if args.out and Path(args.out).resolve() != resume.resolve():
            raise CLIError("--out and --resume name different folders; a resumed run writes into the folder it resumes")
        if not (resume / CHECKPOINT_FILE).is_file():
            raise CLIError(f"--resume {resume}: there is no {CHECKPOINT_FILE} in that folder; pass the output folder "
                           f"of an earlier `xpnn train` run")
        return resume
    out = Path(args.out) if args.out else _new_out_dir()
    if (out / CHECKPOINT_FILE).exists():
        raise CLIError(f"--out {out} already holds a run; continue it with `xpnn train --resume {out}`, or choose "
                       f"another --out")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; pass a new or empty folder")
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise CLIError(f"--out {out} is not empty and holds no xpnn run (it has {shown}); a run never writes over "
                       f"files it did not make: pass a new or empty folder")
    return out


class RunCheckpoint(ModelCheckpoint):
    """The library's checkpoint (:class:`xpnn.ModelCheckpoint`) of a run folder, with the history
    files beside it at every write. ``saved_epoch`` starts at ``initial_epoch``: the checkpoint on
    disk when a run resumes, or the initial weights a new run writes before it starts."""

    def __init__(self, out: Path, metadata: dict[str, Any], initial_epoch: int,
                 callbacks: dict[str, Any] | None = None) -> None:
        super().__init__(out / CHECKPOINT_FILE, callbacks=callbacks, metadata=metadata)
        self.out, self.saved_epoch = out, initial_epoch

    def write(self, epoch: int, logs: dict[str, float], model: Any = None) -> None:
        super().write(epoch, logs, model)
        _write_history(self.model.history, self.out)


def _write_history(history: History, out: Path) -> None:
    history.to_csv(str(out / "history.csv"))
    history.to_json(str(out / "history.json"))


def _plot_history(history: History, out: Path) -> None:
    if not len(history):
        return
    write_report("loss.png", lambda: history.plot(str(out / "loss.png"), "loss", title="loss (cross-entropy)"))
    if "accuracy" in history.history:
        write_report("accuracy.png", lambda: history.plot(str(out / "accuracy.png"), "accuracy", title="accuracy"))


def previous_record(out: Path) -> dict[str, Any]:
    """The run.json of the run in ``out`` ({} if it has none); CLIError if it is damaged."""
    path = out / "run.json"
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:
        raise CLIError(f"{path} is not valid JSON ({type(exc).__name__}: {str(exc)[:120]}); move it aside "
                       f"to resume (a new one is written)") from exc
    if not isinstance(previous, dict) or not isinstance(previous.get("commands", []), list):
        raise CLIError(f"{path} is not a run record (expected an object with a list of commands); move it "
                       f"aside to resume (a new one is written)")
    return previous


def run_record(out: Path, args: argparse.Namespace, settings: dict[str, Any], metadata: dict[str, Any],
                device: backend.Device, started: float) -> dict[str, Any]:
    previous = previous_record(out) if args.resume else {}
    command = shlex.join(["xpnn", *args.argv])
    return {"command": command, "commands": [*previous.get("commands", []), command], "argv": sys.argv,
            "cwd": os.getcwd(), "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "device": device.name, "versions": metadata["versions"], "settings": settings,
            "model": {"name": settings["model"], "file": MODEL_FILE, "checkpoint": CHECKPOINT_FILE},
            "init_from": metadata.get("init_from"),
            "data": {**metadata["data"], "classes": metadata["classes"], "input": metadata["input"]}}


def finish_run(out: Path, history: History, run: dict[str, Any], status: str, started: float) -> None:
    """History and run.json first (the record of the run), then the plots (which may fail alone)."""
    _write_history(history, out)
    run.update(status=status, epochs_completed=history.epochs[-1] if len(history) else 0,
               finished=datetime.now().isoformat(timespec="seconds"), seconds=round(time.time() - started, 2))
    write_json(out / "run.json", run)
    _plot_history(history, out)
