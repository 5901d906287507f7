"""The ``xpnn`` command: ``train``, ``evaluate``, ``predict``, ``devices``, ``info``, ``export``.

Exit codes: 0 success; 1 training diverged (NaN/inf loss); 2 an error the user can fix (a
missing path, unusable data, a model file that does not fit, a GPU that is not there), printed
as one ``xpnn: error: ...`` line (``--debug`` shows the traceback); 130 interrupted (Ctrl-C).

One module per subcommand (train, evaluate, predict, info, export, devices), each holding its
``cmd_*`` function, and below them what they share:

- ``command``: the argument parser and ``main()``, which runs a subcommand and maps errors to
  exit codes (the only module that imports the subcommands);
- ``run_folder``: the folder ``xpnn train`` writes (choice, checkpoint callback, history, run.json);
- ``model_file``: a model file's path and metadata checked, and what the model takes;
- ``settings``: training settings' defaults and checks, and those of a resumed run;
- ``reporting``: scores and confusion-matrix files;
- ``dataset``: ``--data`` loaded into a ``Dataset``, the training split and augmentation;
- ``environment``: ``--device`` and the library versions;
- ``errors``: ``CLIError`` and the one-line error text.

Imports point down that list; no module here imports this package.
"""
from __future__ import annotations

from .command import build_parser, main
from .errors import CLIError

# the subcommands' public names, reachable as ``xpnn.cli.NAME`` for scripts; ``import *`` gives the three above
from .dataset import DEFAULT_IMAGE_SIZE, IDX_SIZE, NAMED_DATA, SAMPLE, SCALE, Dataset, Split, load_data
from .devices import cmd_devices
from .evaluate import cmd_evaluate
from .export import cmd_export
from .info import cmd_info
from .predict import cmd_predict
from .run_folder import CHECKPOINT_FILE, MODEL_FILE
from .settings import DEFAULTS
from .train import cmd_train

__all__ = ["main", "build_parser", "CLIError"]
