"""The device picker: choose devices from the inventory by tag and status, for ``%%tunnel $picker.value``.

Reads only :meth:`Fleet.devices`; needs no event loop.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from ...fleet.fleet import Fleet

__all__ = ["ANY_TAG", "DevicePicker", "Targets"]

#: The tag filter's "no filter" choice.
ANY_TAG = "(any tag)"


class Targets(tuple[str, ...]):
    """Device ids picked in a :class:`DevicePicker`: a tuple, and as text the ids joined by spaces.

    So ``%%tunnel $picker.value`` in a notebook expands to ``device-01 device-02``,
    and ``fleet.run(cmd, picker.value)`` takes it as a list of ids.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return " ".join(self)

    def __repr__(self) -> str:
        return f"Targets{tuple.__repr__(self)}"


class DevicePicker(widgets.VBox):
    """Pick devices from the inventory by tag and status; :attr:`value` is the ids picked.

    Reads the inventory the fleet already has (:meth:`Fleet.devices`); call
    :meth:`refresh` after ``await fleet.refresh()``.  Changing a filter keeps the
    picked devices that still match it.
    """

    def __init__(self, fleet: Fleet, **kwargs: Any) -> None:
        self.fleet = fleet
        self._inventory: list[tuple[str, bool, frozenset[str]]] = []
        self.tag_filter = widgets.Dropdown(options=[ANY_TAG], value=ANY_TAG, description="tag")
        self.status_filter = widgets.ToggleButtons(options=["all", "online", "offline"], value="all")
        self.selector = widgets.SelectMultiple(options=(), rows=10, description="devices")
        self.all_button = widgets.Button(description="select all")
        self.none_button = widgets.Button(description="none")
        self.count_label = widgets.Label()
        super().__init__(
            children=[
                widgets.HBox([self.tag_filter, self.status_filter]),
                self.selector,
                widgets.HBox([self.all_button, self.none_button, self.count_label]),
            ],
            **kwargs,
        )
        self.tag_filter.observe(self._filter, "value")
        self.status_filter.observe(self._filter, "value")
        self.selector.observe(self._count, "value")
        self.all_button.on_click(lambda _: self.select_all())
        self.none_button.on_click(lambda _: self.select_none())
        self.refresh()

    @property
    def value(self) -> Targets:
        """The picked device ids, in inventory order."""
        return Targets(self.selector.value)

    def refresh(self) -> None:
        """Read the fleet's inventory again (tags and online status may have changed)."""
        inventory = self.fleet.devices()
        self._inventory = [
            (
                str(row.device_id),
                row.status == "ONLINE",
                frozenset(f"{k}={'' if v is None else v}" for k, v in (row.tags or {}).items()),
            )
            for row in inventory.itertuples(index=False)
        ]
        tags = sorted(set().union(*(tags for _, _, tags in self._inventory)))
        current = self.tag_filter.value
        self.tag_filter.options = [ANY_TAG, *tags]
        self.tag_filter.value = current if current in tags else ANY_TAG
        self._filter()

    def select_all(self) -> None:
        """Pick every device the filters show."""
        self.selector.value = tuple(self.selector.options)

    def select_none(self) -> None:
        self.selector.value = ()

    def matching(self) -> list[str]:
        """The ids the current filters let through, in inventory order."""
        tag, state = self.tag_filter.value, self.status_filter.value
        return [
            device_id
            for device_id, online, tags in self._inventory
            if (tag == ANY_TAG or tag in tags) and (state == "all" or online == (state == "online"))
        ]

    def _filter(self, change: object = None) -> None:
        picked = set(self.selector.value)
        ids = self.matching()
        if tuple(ids) != tuple(self.selector.options):
            self.selector.options = ids  # unpicks everything
            self.selector.value = tuple(d for d in ids if d in picked)
        self._count()

    def _count(self, change: object = None) -> None:
        self.count_label.value = f"{len(self.selector.value)} of {len(self.selector.options)} picked"
