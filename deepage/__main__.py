"""``python -m deepage``: the same as the ``deepage`` command (and what ``torchrun -m deepage`` runs)."""

from .cli import main

raise SystemExit(main())
