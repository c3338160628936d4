"""``python -m tunnelnb`` is the ``tunnelnb`` command."""

from .cli import main

raise SystemExit(main())
