"""The ``tunnelnb`` command: ``run``, ``platform``, ``agent``, ``sim`` and ``demo``.

Thin: parses arguments and calls the layer that owns the work.  May import
every other package (it starts the servers and the simulated fleet too).
"""

from .main import main

__all__ = ["main"]
