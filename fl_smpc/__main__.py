"""``python -m fl_smpc ...`` = the ``fl-smpc`` command (the demo launcher starts workers this way)."""

from .cli import main

raise SystemExit(main())
