"""The application side of one device: platform REST API, tunnel WebSocket, session.

:class:`~tunnelnb.client.session.DeviceSession` opens a device's tunnel, logs in
to its shell and runs framed commands; what it needs from a platform is the
:class:`~tunnelnb.client.backend.PlatformBackend` protocol, which the REST client
(:mod:`.api`), the official-SDK backend (:mod:`.cloud`) and the cassette layer's
recording and replaying backends implement.  Imports :mod:`tunnelnb.protocol`
and :mod:`tunnelnb.errors` only.
"""
