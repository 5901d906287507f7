"""``python -m xpnn``: the ``xpnn`` command."""
from .cli import main

raise SystemExit(main())
