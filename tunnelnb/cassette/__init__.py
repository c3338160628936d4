"""Record a fleet's traffic to a cassette, and play it back without a network.

Works through public seams only: a recording or replaying object is a
:class:`~tunnelnb.client.backend.PlatformBackend` that a fleet is given with
:meth:`Fleet.use_backend <tunnelnb.fleet.fleet.Fleet.use_backend>`.  Imports
:mod:`tunnelnb.fleet` and below.
"""
