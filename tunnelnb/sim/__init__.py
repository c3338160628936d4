"""The simulated fleet: many device agents with embedded SSH servers and varied profiles.

Serves the demo, Binder, tests and benchmarks.  Uses :mod:`tunnelnb.server`
(agents, SSH servers) and :mod:`tunnelnb.client` (to register its devices).
"""
