"""Notebook widgets over a :class:`~tunnelnb.fleet.fleet.Fleet`: a live dashboard, a device terminal, a device picker.

They are thin front ends: state and work stay in the fleet.  The fleet's
sessions belong to one event loop, either the kernel's own (running in this
thread between cells) or a loop in a thread of its own, so a widget hands it
work with :meth:`~asyncio.AbstractEventLoop.call_soon_threadsafe`, which works
in both cases (:func:`.loop.call_on_loop`).  Widgets show things only by
setting traits (``HTML.value``, ``Label.value``), never by printing or ``with
output:``, because callbacks run long after the cell that displayed the widget,
and only traits reach wherever the widget is displayed.

Device output is untrusted: everything a device (or a command line) contributes
to HTML is escaped.

One module per widget: :mod:`.dashboard`, :mod:`.terminal`, :mod:`.picker`.
"""

from __future__ import annotations

from .dashboard import FleetDashboard
from .picker import ANY_TAG, DevicePicker, Targets
from .terminal import Terminal, TerminalReplay

__all__ = ["ANY_TAG", "DevicePicker", "FleetDashboard", "Targets", "Terminal", "TerminalReplay"]
