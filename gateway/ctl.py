"""``gateway ctl``: the admin API from a terminal (docs/operations.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Add the ``ctl`` command and its subcommands to the ``gateway`` parser."""
    sub.add_parser("ctl", help="administer a running gateway through its admin API")


def main(args: argparse.Namespace) -> int:
    print("gateway ctl: not built yet")
    return 1
