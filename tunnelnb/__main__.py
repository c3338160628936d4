"""``python -m tunnelnb`` is the ``tunnelnb`` command."""

from .cli.main import main

raise SystemExit(main())
