"""The ``gateway`` command: run, check-config, version, passwd.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 2 for a bad configuration
or a listener that cannot bind, 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import resource
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__, ctl
from . import config as config_mod
from . import logging as gw_logging
from .app import Gateway
from .auth import users as users_mod
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
    _add_passwd_parser(sub)
    ctl.add_parser(sub)
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


def _run_config(args: argparse.Namespace) -> config_mod.Config:
    """The configuration of ``gateway run``: the file with the command line's overrides.
    Read again, the same way, by a reload (SIGHUP)."""
    config = _load(args)
    listen = [config_mod.parse_listen(spec) for spec in args.listen]
    return config_mod.override(
        config, listen=listen, data_dir=args.data_dir, log_level=args.log_level
    )


async def _run(gateway: Gateway) -> None:
    # Signals are caught from before the first bind, so an early SIGINT still drains.
    # SIGHUP reloads the configuration (docs/operations.md, "Reload").
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        await gateway.bind()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.run)
            async for signum in signals:
                gateway.log.info("gateway.signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    with contextlib.suppress(config_mod.ConfigError):  # logged; nothing changed
                        gateway.reload("SIGHUP")
                    continue
                gateway.stop()
                break


def _add_passwd_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    passwd = sub.add_parser(
        "passwd",
        help="add a user to the users file or change their password (read from the "
        "terminal, or one line of standard input when it is not a terminal)",
    )
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument(
        "-f",
        "--file",
        metavar="USERS_FILE",
        help="the users file (default: auth.users_file of the configuration)",
    )
    passwd.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"configuration naming the users file ({DEFAULT_CONFIG})",
    )
    passwd.add_argument(
        "--group",
        action="append",
        metavar="G",
        help="a group of the user (repeatable); replaces the user's groups",
    )
    passwd.add_argument("--delete", action="store_true", help="remove the user")
    passwd.add_argument(
        "--iterations",
        type=int,
        default=users_mod.DEFAULT_ITERATIONS,
        help=f"PBKDF2 iterations of the SCRAM keys (default {users_mod.DEFAULT_ITERATIONS})",
    )


def _users_file(args: argparse.Namespace) -> str | None:
    if args.file:
        return str(args.file)
    config = Path(args.config) if args.config else DEFAULT_CONFIG
    if not config.exists():
        return None
    # Read raw: validating the configuration would fail while the users file is new.
    with config.open("rb") as file:
        auth = tomllib.load(file).get("auth", {})
    users_file = auth.get("users_file") if isinstance(auth, dict) else None
    return users_file if isinstance(users_file, str) and users_file else None


def _read_password() -> str:
    """The new password: asked twice on a terminal, never echoed; else one line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise ValueError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ValueError("the password must not be empty")
    return password


def _passwd(args: argparse.Namespace) -> int:
    """Exit 0 when done, 1 for a refused request, 2 for an unusable file."""
    try:
        path = _users_file(args)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"gateway: cannot read the configuration: {exc}", file=sys.stderr)
        return 2
    if path is None:
        print("gateway: no users file: give -f USERS_FILE or set auth.users_file", file=sys.stderr)
        return 2
    header = ""
    users = users_mod.Users()
    try:
        if Path(path).exists():
            text = Path(path).read_text(encoding="utf-8")
            users = users_mod.parse_users(text, path)
            header = users_mod.leading_comments(text)
    except (OSError, UnicodeDecodeError, users_mod.UsersFileError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    existed = args.user in users.records
    try:
        if args.delete:
            if not existed:
                raise ValueError(f"no user {args.user!r} in {path}")
            users = users_mod.without_user(users, args.user)
        else:
            users_mod.check_user_name(args.user)
            if not users_mod.MIN_ITERATIONS <= args.iterations <= users_mod.MAX_ITERATIONS:
                raise ValueError(
                    f"--iterations must be between {users_mod.MIN_ITERATIONS} "
                    f"and {users_mod.MAX_ITERATIONS}"
                )
            groups = tuple(args.group) if args.group else None
            users = users_mod.with_password(
                users, args.user, _read_password(), groups=groups, iterations=args.iterations
            )
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("gateway: cancelled", file=sys.stderr)
        return 1
    try:
        users_mod.save_users(path, users, header or users_mod.HEADER)
    except OSError as exc:
        print(f"gateway: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    done = "deleted" if args.delete else "changed the password of" if existed else "added"
    print(f"{path}: {done} user {args.user!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"gateway {__version__}")
        return 0
    if args.command == "ctl":
        return ctl.main(args)
    if args.command == "passwd":
        return _passwd(args)
    try:
        config = _run_config(args) if args.command == "run" else _load(args)
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
        trio.run(_run, Gateway(config, reload_config=lambda: _run_config(args)))
    except StartupError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
