"""Jupyter front end: the ``%tunnel`` magics, widgets, progress and ANSI rendering.

Thin: parses what the user typed, calls the fleet, displays the result.  No
protocol logic lives here.  Imports :mod:`tunnelnb.cassette`, :mod:`tunnelnb.fleet`
and below.
"""
