"""The Secure Tunnel protocol, pure: frames, shell framing, device link, AK/SK signing.

No I/O here (no sockets, no event loop, no clock of its own): functions and
small state machines that take text or bytes and return frames and events, in
the style of h11 and wsproto, so that they are tested without sockets and
fuzzed.  Every other layer builds on it; it imports only :mod:`tunnelnb.errors`.

- :mod:`.frames`: the JSON frames, their operations, close and status codes, chunking.
- :mod:`.shell`: framing commands in a raw PTY stream (markers, exit codes, escapes).
- :mod:`.devicelink`: how a device learns of a tunnel (``tunnel_notify``) and logs in.
- :mod:`.signing`: Huawei Cloud's AK/SK request signatures.
"""
