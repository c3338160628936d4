"""Many devices, one table: :class:`~tunnelnb.fleet.fleet.Fleet`, results, parsers, targets.

A fleet keeps a pool of device sessions, fans a command out over them and turns
whatever happens on each device into a row of a pandas table; the blocking twin
(:mod:`.blocking`) serves scripts.  Imports :mod:`tunnelnb.client` and below.
"""
