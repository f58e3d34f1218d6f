"""The ``gateway`` command: run, check-config, version.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 2 for a bad configuration
or a listener that cannot bind, 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__
from . import config as config_mod
from . import logging as gw_logging
from .app import Gateway
from .listeners import StartupError

DEFAULT_CONFIG = Path("conf/gateway.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="MQTT/STOMP/WebSocket/HTTP messaging gateway"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the gateway")
    check = sub.add_parser("check-config", help="load and check a configuration file, then exit")
    sub.add_parser("version", help="print the version")
    for p in (run, check):
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help=f"TOML configuration file (default: {DEFAULT_CONFIG} if it exists, "
            "else the built-in defaults)",
        )
    run.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="PROTO=HOST:PORT",
        help="replace the config's listeners of PROTO (repeatable); port 0 picks a free port",
    )
    run.add_argument("--data-dir", metavar="DIR", help="where durable state is kept")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


def _load(args: argparse.Namespace) -> config_mod.Config:
    if args.config is not None:
        return config_mod.load(args.config)
    if DEFAULT_CONFIG.exists():
        return config_mod.load(DEFAULT_CONFIG)
    return config_mod.default()


def _raise_open_file_limit() -> int:
    """Every connection is a file descriptor: take the most the system allows us.

    The soft limit goes up to the hard one; as root, the hard one may go up too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (1 << 20, hard):
        if target == resource.RLIM_INFINITY or target <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            return target
        except (ValueError, OSError):
            continue
    return soft


async def _run(gateway: Gateway) -> None:
    # Signals are caught from before the first bind, so an early SIGINT still drains.
    # SIGHUP reloads the TLS listeners' certificates and keys.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        await gateway.bind()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.run)
            async for signum in signals:
                gateway.log.info("gateway.signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    gateway.reload_tls("SIGHUP")
                    continue
                gateway.stop()
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"gateway {__version__}")
        return 0
    try:
        config = _load(args)
        if args.command == "run":
            listen = [config_mod.parse_listen(spec) for spec in args.listen]
            config = config_mod.override(
                config, listen=listen, data_dir=args.data_dir, log_level=args.log_level
            )
    except config_mod.ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{config.source}: OK ({len(config.listeners)} listener(s))")
        return 0
    gw_logging.configure(config.gateway.log_level, config.gateway.log_format)
    open_files = _raise_open_file_limit()
    gw_logging.get_logger().info("gateway.limits", open_files=open_files)
    try:
        trio.run(_run, Gateway(config))
    except StartupError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
