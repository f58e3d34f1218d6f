"""``gateway ctl``: the admin API from a terminal (docs/admin.md).

A client of a running gateway's HTTP listener (``/api/v1/admin/``), with the standard
library only. Each command is one request; the answer is printed as a table (or a few
lines), or as the JSON the API gave with ``--json``.

Exit codes: 0 done, 1 the gateway answered with an error (its message is printed),
2 the gateway could not be reached.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

DEFAULT_URL = "http://127.0.0.1:8080"
PREFIX = "/api/v1/admin"
# Payloads longer than this are cut in the peek table (--json shows them whole).
PAYLOAD_WIDTH = 60

Args = argparse.Namespace


@dataclass(frozen=True, slots=True)
class Command:
    help: str
    method: str
    path: Callable[[Args], str]
    show: Callable[[Args, Any], str]
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()


# -- formatting ------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value) or "-"
    return str(value).replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns, a header line first."""
    cells = [list(headers), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _ago(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return _duration(time.time() - epoch)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _show_overview(args: Args, body: Any) -> str:
    conns = body["connections"]
    protocols = ", ".join(f"{name} {n}" for name, n in sorted(conns["by_protocol"].items()))
    lines = [
        f"version      {body['version']}",
        f"uptime       {_duration(body['uptime'])}",
        f"connections  {conns['total']}" + (f" ({protocols})" if protocols else ""),
        f"sessions     {body['sessions']}",
        f"messages     {body['messages_in']} in, {body['messages_out']} out",
    ]
    if body["queues"]:
        queues = [(q["name"], q["depth"], q["consumers"]) for q in body["queues"]]
        lines += ["", table(("QUEUE", "DEPTH", "CONSUMERS"), queues)]
    if body["bridges"]:
        lines += ["", _bridges_table(body["bridges"])]
    return "\n".join(lines)


def _show_connections(args: Args, body: Any) -> str:
    rows = [
        (
            c["id"],
            c["protocol"],
            c["listener"],
            c["peer"],
            c["client_id"] or None,
            c["user"],
            c["tls"],
            _ago(c["connected_at"]),
            c["messages_in"],
            c["messages_out"],
            c["bytes_in"],
            c["bytes_out"],
        )
        for c in body["connections"]
    ]
    headers = (
        "ID", "PROTOCOL", "LISTENER", "PEER", "CLIENT_ID", "USER", "TLS", "AGE",
        "MSG_IN", "MSG_OUT", "BYTES_IN", "BYTES_OUT",
    )  # fmt: skip
    return table(headers, rows)


def _show_sessions(args: Args, body: Any) -> str:
    rows = [
        (
            s["client_id"],
            s["connected"],
            s["user"],
            s["subscriptions"] + s.get("queues", []),
            s["queued"],
            s["in_flight"],
            "never" if s["expiry"] is None else _duration(s["expiry"]),
        )
        for s in body["sessions"]
    ]
    headers = ("CLIENT_ID", "CONNECTED", "USER", "SUBSCRIPTIONS", "QUEUED", "IN_FLIGHT", "EXPIRY")
    return table(headers, rows)


QUEUE_COLUMNS = (
    "name", "depth", "consumers", "in_flight", "enqueued", "delivered", "acked",
    "dead_lettered", "dropped", "dead_letter",
)  # fmt: skip


def _queues_table(queues: Sequence[dict[str, Any]]) -> str:
    rows = [[q.get(column) for column in QUEUE_COLUMNS] for q in queues]
    return table([column.upper() for column in QUEUE_COLUMNS], rows)


def _show_queues(args: Args, body: Any) -> str:
    return _queues_table(body["queues"])


def _show_peek(args: Args, body: Any) -> str:
    rows = []
    for m in body["messages"]:
        payload = m.get("payload", "")
        if m.get("encoding") == "base64":
            payload = f"(base64) {payload}"
        if len(payload) > PAYLOAD_WIDTH:
            payload = payload[: PAYLOAD_WIDTH - 3] + "..."
        headers = ",".join(f"{k}={v}" for k, v in m.get("headers", {}).items())
        rows.append(
            (m["message_id"], m["priority"], m.get("delivery_count"), headers or None, payload)
        )
    return table(("MESSAGE_ID", "PRIORITY", "DELIVERIES", "HEADERS", "PAYLOAD"), rows)


def _show_topics(args: Args, body: Any) -> str:
    return table(("TOPIC", "PUBLISHED"), [(t["topic"], t["published"]) for t in body["topics"]])


def _show_retained(args: Args, body: Any) -> str:
    rows = [(r["topic"], r["size"], r["qos"], _ago(r["timestamp"])) for r in body["retained"]]
    return table(("TOPIC", "SIZE", "QOS", "AGE"), rows)


def _bridges_table(bridges: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            b["name"],
            b["kind"],
            b["state"],
            b["outbox_depth"],
            b["in_flight"],
            b["sent"],
            b["confirmed"],
            b["received"],
            b["last_error"],
        )
        for b in bridges
    ]
    headers = (
        "BRIDGE", "KIND", "STATE", "OUTBOX", "IN_FLIGHT", "SENT", "CONFIRMED", "RECEIVED",
        "LAST_ERROR",
    )  # fmt: skip
    return table(headers, rows)


def _show_bridges(args: Args, body: Any) -> str:
    return _bridges_table(body["bridges"])


def _show_listeners(args: Args, body: Any) -> str:
    rows = [
        (item["name"], item["protocol"], item["address"], item["tls"], item["connections"])
        for item in body["listeners"]
    ]
    return table(("NAME", "PROTOCOL", "ADDRESS", "TLS", "CONNECTIONS"), rows)


def _show_json(args: Args, body: Any) -> str:
    return json.dumps(body, indent=2, sort_keys=False)


def _show_reload(args: Args, body: Any) -> str:
    result = body.get("reloaded")
    if not isinstance(result, dict):
        return f"reloaded: {result}"
    lines = ["reloaded"]
    for key, value in result.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else _cell(value)
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)


def _segment(name: str) -> str:
    return quote(name, safe="")


COMMANDS: dict[str, Command] = {
    "overview": Command(
        "totals: connections, messages, queues, bridges",
        "GET",
        lambda a: "/overview",
        _show_overview,
    ),
    "connections": Command("open connections", "GET", lambda a: "/connections", _show_connections),
    "kick": Command(
        "close a connection (by connection id or client id)",
        "POST",
        lambda a: f"/connections/{_segment(a.target)}/kick",
        lambda a, b: f"kicked connection {', '.join(b['kicked'])}",
        ((("target",), {"metavar": "ID_OR_CLIENT"}),),
    ),
    "sessions": Command("sessions, connected or not", "GET", lambda a: "/sessions", _show_sessions),
    "queues": Command("queues and their counters", "GET", lambda a: "/queues", _show_queues),
    "peek": Command(
        "look at a queue's ready messages (nothing is taken)",
        "GET",
        lambda a: f"/queues/{_segment(a.queue)}/messages?max={a.n}",
        _show_peek,
        (
            (("queue",), {"metavar": "QUEUE"}),
            (("-n",), {"type": int, "default": 10, "help": "messages shown (default 10)"}),
        ),
    ),
    "purge": Command(
        "discard a queue's ready messages (in-flight ones stay)",
        "POST",
        lambda a: f"/queues/{_segment(a.queue)}/purge",
        lambda a, b: f"purged {b['purged']} message(s) from {a.queue}",
        ((("queue",), {"metavar": "QUEUE"}),),
    ),
    "move": Command(
        "move a queue's ready messages to --to, or dead letters back where they came from",
        "POST",
        lambda a: (
            f"/queues/{_segment(a.queue)}/move" + ("" if a.to is None else f"?to={_segment(a.to)}")
        ),
        lambda a, b: (
            f"moved {b['moved']} message(s) from {a.queue} to {a.to or 'their original queues'}"
            + (f"; {b['kept']} had nowhere to go and stay" if b.get("kept") else "")
        ),
        (
            (("queue",), {"metavar": "QUEUE"}),
            (("--to",), {"metavar": "QUEUE", "help": "the destination queue"}),
        ),
    ),
    "topics": Command("the most published topics", "GET", lambda a: "/topics", _show_topics),
    "retained": Command("retained messages", "GET", lambda a: "/retained", _show_retained),
    "delete-retained": Command(
        "clear the retained message of a topic",
        "DELETE",
        lambda a: f"/retained/{quote(a.topic, safe='/')}",
        lambda a, b: f"deleted the retained message of {b['deleted']}",
        ((("topic",), {"metavar": "TOPIC"}),),
    ),
    "bridges": Command("bridges and their state", "GET", lambda a: "/bridges", _show_bridges),
    "pause": Command(
        "disconnect a bridge and keep it so (its outboxes fill)",
        "POST",
        lambda a: f"/bridges/{_segment(a.bridge)}/pause",
        lambda a, b: f"bridge {b['name']}: {b['state']}",
        ((("bridge",), {"metavar": "BRIDGE"}),),
    ),
    "resume": Command(
        "let a paused bridge reconnect",
        "POST",
        lambda a: f"/bridges/{_segment(a.bridge)}/resume",
        lambda a, b: f"bridge {b['name']}: {b['state']}",
        ((("bridge",), {"metavar": "BRIDGE"}),),
    ),
    "listeners": Command(
        "listeners, addresses and connection counts",
        "GET",
        lambda a: "/listeners",
        _show_listeners,
    ),
    "config": Command(
        "the configuration in force (secrets redacted)", "GET", lambda a: "/config", _show_json
    ),
    "reload": Command(
        "read the configuration file again", "POST", lambda a: "/reload", _show_reload
    ),
}


# -- the command line -------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Add the ``ctl`` command and its subcommands to the ``gateway`` parser."""
    parser = sub.add_parser(
        "ctl",
        help="administer a running gateway through its admin API",
        description="Administer a running gateway through its admin API (docs/admin.md). "
        "Exit codes: 0 done, 1 the gateway refused (its message is printed), "
        "2 the gateway could not be reached.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("GATEWAY_ADMIN_URL", DEFAULT_URL),
        help=f"the gateway's HTTP listener (default: $GATEWAY_ADMIN_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--user",
        default=os.environ.get("GATEWAY_ADMIN_USER"),
        help="an administrator's user name (default: $GATEWAY_ADMIN_USER; none: anonymous)",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("GATEWAY_ADMIN_PASSWORD"),
        help="their password (default: $GATEWAY_ADMIN_PASSWORD)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    commands = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        each = commands.add_parser(name, help=command.help, description=command.help)
        for flags, options in command.arguments:
            each.add_argument(*flags, **options)
        # Also after the command: gateway ctl queues --json
        each.add_argument("--json", action="store_true", default=argparse.SUPPRESS)


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def request(args: Args, method: str, path: str) -> Any:
    """One request to the admin API: its JSON answer, or Failure (1: an error answer,
    2: no answer)."""
    url = args.url.rstrip("/") + PREFIX + path
    headers = {"Accept": "application/json", "User-Agent": "gateway-ctl"}
    if args.user:
        token = f"{args.user}:{args.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
    data = b"" if method in ("POST", "DELETE") else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw)
            message = f"{exc.code} {body['error']}: {body['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"{exc.code} {exc.reason}"
        raise Failure(1, message) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Failure(2, f"cannot reach {args.url}: {reason}") from None
    except ValueError:
        raise Failure(1, f"{url} did not answer with JSON") from None


def main(args: Args) -> int:
    command = COMMANDS[args.ctl_command]
    if command is COMMANDS["peek"] and not 1 <= args.n <= 1000:
        print("gateway ctl: -n must be between 1 and 1000", file=sys.stderr)
        return 1
    try:
        body = request(args, command.method, command.path(args))
    except Failure as exc:
        print(f"gateway ctl: {exc.message}", file=sys.stderr)
        return exc.code
    print(json.dumps(body, indent=2) if args.json else command.show(args, body))
    return 0
