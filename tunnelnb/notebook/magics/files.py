"""``%tunnel get`` and ``%tunnel put``: files in and out of devices (:mod:`tunnelnb.fleet.files`).

``%tunnel get TARGETS REMOTE LOCAL_DIR`` writes ``LOCAL_DIR/DEVICE_ID/NAME`` for
each device (never over a file unless ``--force``); ``%tunnel put TARGETS LOCAL
REMOTE`` writes the local file on each device, whole and checked or not at all.
Both show progress as a run does and return a
:class:`~tunnelnb.fleet.transfers.TransferResults` (one row per device).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...client.result import CommandResult
from ...fleet import files
from ...fleet.transfers import TransferResults
from ..progress import cell_progress
from .parsing import parse, subcommand, target_words
from .run import Interrupted

if TYPE_CHECKING:
    from . import TunnelMagics

__all__ = ["get", "put"]


@subcommand("get")
@argument("targets", nargs="+", help="devices: ids, globs, ranges, @tags")
@argument("remote", help="the file on the devices (relative: to the login's directory)")
@argument("local_dir", help="where to write LOCAL_DIR/DEVICE_ID/NAME")
@argument("--force", action="store_true", help="replace local files that exist (else those devices are refused)")
@argument("--timeout", type=float, help="seconds per exchange with a device (default: TunnelMagics.timeout)")
@argument("-o", "--out", metavar="VAR", help="store the TransferResults in this variable")
def get(magics: TunnelMagics, rest: str) -> TransferResults:
    """Copy a file from devices: exact (checksummed), one local file per device."""
    args = parse(rest, get.parser)
    fleet = magics.need_fleet()
    ids = _ids(magics, args)
    timeout = _timeout(magics, args)
    return _transfer(
        magics,
        args,
        ids,
        lambda on_result: files.get(
            fleet, args.remote, ids, args.local_dir, overwrite=args.force, timeout=timeout, on_result=on_result
        ),
    )


@subcommand("put")
@argument("targets", nargs="+", help="devices: ids, globs, ranges, @tags")
@argument("local", help="the local file")
@argument("remote", help="where on the devices (ending in /: a directory, the file keeps its name)")
@argument("--keep-mode", action="store_true", help="give the remote file the local file's permission bits")
@argument("--timeout", type=float, help="seconds per exchange with a device (default: TunnelMagics.timeout)")
@argument("-o", "--out", metavar="VAR", help="store the TransferResults in this variable")
def put(magics: TunnelMagics, rest: str) -> TransferResults:
    """Copy a local file to devices: whole and checked, or not at all (a temporary file, then mv)."""
    args = parse(rest, put.parser)
    fleet = magics.need_fleet()
    ids = _ids(magics, args)
    timeout = _timeout(magics, args)
    return _transfer(
        magics,
        args,
        ids,
        lambda on_result: files.put(
            fleet, args.local, args.remote, ids, keep_mode=args.keep_mode, timeout=timeout, on_result=on_result
        ),
    )


def _ids(magics: TunnelMagics, args: argparse.Namespace) -> list[str]:
    ids = magics.need_fleet().select(target_words(args.targets))
    if not ids:
        raise UsageError(f"no device matches {' '.join(args.targets)!r}: %tunnel devices lists them")
    return ids


def _timeout(magics: TunnelMagics, args: argparse.Namespace) -> float:
    timeout = max(magics.timeout, files.DEFAULT_TIMEOUT_S) if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    return float(timeout)


def _transfer(
    magics: TunnelMagics,
    args: argparse.Namespace,
    ids: list[str],
    start: Callable[[Callable[[CommandResult], None]], Coroutine[Any, Any, TransferResults]],
) -> TransferResults:
    """Run the transfer on the fleet's loop with a progress display; store and return its rows."""
    with cell_progress(
        len(ids), magics.event_loop(), in_kernel=magics.in_kernel(), after_s=magics.progress_after
    ) as progress:
        try:
            results: TransferResults = magics.call(progress.around(start(progress.update)))
        except KeyboardInterrupt:
            raise Interrupted("interrupted: the devices' rows are cancelled (see %tunnel history)") from None
    results.html_max_rows = magics.display_limit
    if args.out:
        magics.user_ns[args.out] = results
    return results
