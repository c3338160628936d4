"""The programs on the other side: the local IoTDA-compatible platform and the device agent.

The platform (REST + WebSocket relay + device access) and the agent (tunnel
WebSocket ⇄ SSH PTY shell), with the SSH server and MQTT pieces they use.  They
speak the protocol like any other peer, so they import :mod:`tunnelnb.protocol`,
:mod:`tunnelnb.errors` and :mod:`tunnelnb.tls` only, never the client side.
"""
