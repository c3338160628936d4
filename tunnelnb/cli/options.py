"""The command-line options several ``tunnelnb`` subcommands share, defined once.

:mod:`.connecting` reads the connection options back; each subcommand's own
parser lives with it (:mod:`.files`, :mod:`.shell`) or in :mod:`.main`.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_cloud", "add_connection", "add_log_level", "add_platform_auth", "add_tls_client"]


def add_log_level(p: argparse.ArgumentParser, default: str = "warning") -> None:
    # Quiet by default: an operator following the README runs these in the background of
    # the terminal they type in, where every INFO line is noise; --log-level info shows more.
    p.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help=f"how much to log on stderr (default {default}; never tokens or passwords)",
    )


def add_platform_auth(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--project-id",
        default=os.environ.get("TUNNELNB_PROJECT_ID", "demo"),
        help="IoTDA project id (default: $TUNNELNB_PROJECT_ID or 'demo')",
    )
    p.add_argument(
        "--api-token",
        default=None,
        help="API token sent as X-Auth-Token (default: $TUNNELNB_API_TOKEN); prefer the variable, "
        "command lines are visible to other users",
    )


def add_connection(p: argparse.ArgumentParser) -> None:
    """The platform and login options of the commands that work on devices (run, get, put)."""
    p.add_argument(
        "--platform",
        default=os.environ.get("TUNNELNB_URL"),
        metavar="URL",
        help="platform base URL (default: $TUNNELNB_URL)",
    )
    add_platform_auth(p)
    p.add_argument("--user", default=os.environ.get("TUNNELNB_LOGIN_USER", "ops"), help="login user (default ops)")
    p.add_argument(
        "--password-env",
        default="TUNNELNB_LOGIN_PASSWORD",
        metavar="VAR",
        help="environment variable holding the login password (default TUNNELNB_LOGIN_PASSWORD); "
        "prompted for when unset and stdin is a terminal",
    )


def add_cloud(p: argparse.ArgumentParser) -> None:
    """Huawei Cloud IoTDA through the official SDK, instead of --platform (run, get, put)."""
    cloud = p.add_argument_group(
        "Huawei Cloud IoTDA (pip install 'tunnelnb[huaweicloud]'; AK/SK from $HUAWEICLOUD_SDK_AK / _SK, "
        "project from --project-id or $HUAWEICLOUD_SDK_PROJECT_ID)"
    )
    cloud.add_argument("--huaweicloud", action="store_true", help="use IoTDA through the official SDK")
    cloud.add_argument("--region", help="IoTDA region, e.g. cn-north-4")
    cloud.add_argument("--endpoint", metavar="URL", help="your instance's application endpoint")
    cloud.add_argument("--instance-id", help="IoTDA instance id (Instance-Id header)")


def add_tls_client(p: argparse.ArgumentParser) -> None:
    """Trusting the platform's TLS certificate: a CA bundle, or no check at all."""
    p.add_argument("--ca-bundle", metavar="PEM", help="trust the platform's certificate from this CA bundle")
    p.add_argument("--insecure", action="store_true", help="do not verify the platform's certificate (warns)")
