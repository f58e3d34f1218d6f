"""MQTT interoperability scenarios, run unchanged against Mosquitto and against the gateway.

Each scenario is ``async def scenario(port) -> Transcript``: it drives real clients (paho-mqtt,
or the mosquitto_pub / mosquitto_sub programs) against the server on ``port`` and returns what
they observed as plain data -- a list of ``(step, observation)`` pairs. Everything that may
legitimately vary between runs or servers (client ids, packet ids, timing, the unique topic
prefix, the exact remaining message expiry) is normalised away, so two servers that behave the
same produce equal transcripts.

Every run uses its own topic prefix ``interop/<uid>/`` (the uid is written ``U`` in
transcripts) and clears the retained messages and persistent sessions it
created, so it neither sees nor leaves anything on a shared Mosquitto.

Absence is proved with barrier messages, not sleeps: a barrier sent after the publishes under
test, on the same connection or after their acknowledgement, arrives only once everything sent
before it has been. Retained messages are flushed the same way with a retained barrier: a later
SUBSCRIBE's retained messages follow an earlier one's.

``python -m tests.e2e.mqtt_scenarios [PORT]`` runs every scenario twice against one server
(Mosquitto's 1883 by default) and reports whether the transcripts are stable.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from uuid import uuid4

import paho.mqtt.client as paho
import trio

from tests.e2e.scenario_runner import check_stability
from tests.paho import Paho, properties_dict

Transcript = list[tuple[str, Any]]
Scenario = Callable[[int], Awaitable[Transcript]]

V311 = paho.MQTTv311
V5 = paho.MQTTv5
# How long to wait for a barrier before writing "<timeout>" into the transcript instead.
BARRIER_WAIT = 3.0
TIMEOUT = "<timeout>"


def code(reason: Any) -> int:
    """A paho ReasonCode (or int) as an int."""
    return int(getattr(reason, "value", reason))


def codes(reasons: Sequence[Any]) -> list[int]:
    return [code(r) for r in reasons]


class Run:
    """One scenario run against one server: unique names, clients, and cleanup."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.uid = uuid4().hex[:8]
        self.prefix = f"interop/{self.uid}"
        self.clients: list[Paho] = []
        self.retained: set[str] = set()
        # (client id, protocol) of sessions that may outlive their connection.
        self.sessions: set[tuple[str, int]] = set()
        self._barriers = 0
        self._retained_barrier: str | None = None

    # -- names -------------------------------------------------------------------------------

    def t(self, rel: str) -> str:
        """A topic under this run's prefix."""
        return f"{self.prefix}/{rel}"

    def barrier_topic(self, name: str) -> str:
        # Outside the prefix, and its second level is not the bare uid either, so no filter
        # under test ("interop/U/#", "+/U/#") ever matches a barrier.
        return f"interop-barrier/{self.uid}-{name}"

    def client_id(self, name: str) -> str:
        return f"{name}-{self.uid}"

    def norm(self, text: str) -> str:
        return text.replace(self.uid, "U")

    # -- clients -----------------------------------------------------------------------------

    def client(
        self, name: str, protocol: int = V311, *, clean_session: bool = True, keepalive: int = 60
    ) -> Paho:
        client = Paho(
            self.port,
            self.client_id(name),
            protocol=protocol,
            clean_session=clean_session,
            keepalive=keepalive,
        )
        self.clients.append(client)
        if not clean_session:
            self.sessions.add((self.client_id(name), protocol))
        return client

    async def connect(self, name: str, protocol: int = V311, **connect: Any) -> Paho:
        """A connected client; the CONNACK must be a success."""
        client = self.client(name, protocol)
        rc = await client.connect(**connect)
        assert code(rc) == 0, f"{name}: CONNACK {rc}"
        return client

    async def publish(
        self,
        client: Paho,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        **kw: Any,
    ) -> int:
        if retain:
            self.retained.add(topic)
        return await client.publish(topic, payload, qos, retain, **kw)

    # -- messages ----------------------------------------------------------------------------

    def msg(self, m: paho.MQTTMessage, *, props: bool = False) -> tuple[Any, ...]:
        """(topic, payload, qos, retain[, properties]) with run-specific names normalised."""
        base: tuple[Any, ...] = (
            self.norm(m.topic),
            self.norm(m.payload.decode("utf-8", "replace")),
            m.qos,
            bool(m.retain),
        )
        if not props:
            return base
        return (*base, self.props(getattr(m, "properties", None)))

    def props(self, properties: Any) -> dict[str, Any]:
        out = properties_dict(properties)
        out.pop("TopicAlias", None)  # a transport detail; paho resolves aliases itself
        if "ResponseTopic" in out:
            out["ResponseTopic"] = self.norm(out["ResponseTopic"])
        if "MessageExpiryInterval" in out:
            # The server sends what is left of the interval: how much depends on timing.
            left = out["MessageExpiryInterval"]
            out["MessageExpiryInterval"] = f"{left}" if left > 60 or left < 1 else "1..60"
        return out

    async def drain(self, client: Paho, barrier: str, *, props: bool = False) -> list[Any]:
        """Every message up to the barrier (excluded), in arrival order."""
        got: list[Any] = []
        while True:
            try:
                m = await client.get(BARRIER_WAIT)
            except queue.Empty:
                got.append(TIMEOUT)
                return got
            if m.topic == barrier:
                return got
            got.append(self.msg(m, props=props))

    async def barrier(
        self, publisher: Paho, *subscribers: Paho, props: bool = False, sort: bool = False
    ) -> list[list[Any]]:
        """Publish a fresh barrier (QoS 2) and drain each subscriber up to it.

        Every subscriber must already be subscribed to barrier_topic("live").
        """
        topic = self.barrier_topic("live")
        self._barriers += 1
        await publisher.publish(topic, f"barrier {self._barriers}".encode(), qos=2)
        out = []
        for sub in subscribers:
            got = await self.drain(sub, topic, props=props)
            out.append(sorted(got, key=repr) if sort else got)
        return out

    async def listen_barrier(self, *subscribers: Paho) -> None:
        for sub in subscribers:
            await sub.subscribe(self.barrier_topic("live"), 2)

    async def sync_retained(self, client: Paho, *, props: bool = False) -> list[Any]:
        """The retained messages sent for the client's earlier SUBSCRIBEs, sorted by topic.

        Subscribes to a retained barrier: its retained message follows them.
        """
        topic = self.barrier_topic("retained")
        if self._retained_barrier is None:
            setter = await self.connect("rb")
            await self.publish(setter, topic, b"sync", qos=1, retain=True)
            await setter.close()
            self._retained_barrier = topic
        await client.subscribe(topic, 1)
        return sorted(await self.drain(client, topic, props=props), key=repr)

    async def cleanup(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
        if self.retained:
            cleaner = Paho(self.port, self.client_id("clean"))
            await cleaner.connect()
            for topic in sorted(self.retained):
                await cleaner.publish(topic, b"", qos=1, retain=True)
            await cleaner.close()
        for client_id, protocol in sorted(self.sessions):
            # Connect once more with a clean session so the server forgets this one.
            ender = Paho(self.port, client_id, protocol=protocol, clean_session=True)
            if protocol == V5:
                await ender.connect(clean_start=True, properties={"SessionExpiryInterval": 0})
            else:
                await ender.connect()
            await ender.close()


@contextlib.asynccontextmanager
async def run_on(port: int) -> AsyncIterator[Run]:
    run = Run(port)
    try:
        yield run
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(15):
            await run.cleanup()


# -- 1. wildcards (MQTT 3.1.1) -------------------------------------------------------------

WILDCARD_TOPICS = ["a", "a/b", "a/b/c", "a/", "a//c", "b/temp", "/temp", "x/y/temp", "temp"]
WILDCARD_FILTERS = [
    "a/#",
    "a/+",
    "+/temp",
    "+",
    "a/+/c",
    "#",
    "+/+",
    "+/#",
    "a/b",
    "/+",
    "+/+/+",
]


async def wildcards(port: int) -> Transcript:
    out: Transcript = []
    async with run_on(port) as run:
        pub = await run.connect("pub")
        subs = []
        for i, rel in enumerate(WILDCARD_FILTERS):
            sub = await run.connect(f"w{i}")
            granted = await sub.subscribe(run.t(rel), 1)
            out.append((f"suback {rel}", codes(granted)))
            subs.append(sub)
        # The '$' rule: a filter starting with a wildcard never matches a topic starting
        # with '$'. '#' alone would flood us with Mosquitto's $SYS, so the filters below
        # pin the second level to this run's uid instead.
        dollar_filters = [f"+/{run.uid}/x", f"+/{run.uid}/#", f"$interop/{run.uid}/#"]
        dollar_filters.append(f"$SYS/interop/{run.uid}")
        for rel in dollar_filters:
            sub = await run.connect(f"d{len(subs)}")
            out.append((f"suback {run.norm(rel)}", codes(await sub.subscribe(rel, 1))))
            subs.append(sub)
        await run.listen_barrier(*subs)

        for rel in WILDCARD_TOPICS:
            await run.publish(pub, run.t(rel), rel.encode(), qos=1)
        for topic in (f"interop-plain/{run.uid}/x", f"$interop/{run.uid}/x"):
            await run.publish(pub, topic, b"dollar", qos=1)
        # Mosquitto forbids client publishes to $SYS; 3.1.1 has no way to say so but drop.
        await run.publish(pub, f"$SYS/interop/{run.uid}", b"sys", qos=1)

        results = await run.barrier(pub, *subs, sort=True)
        for rel, got in zip(WILDCARD_FILTERS, results, strict=False):
            out.append((f"matches {rel}", [m if m == TIMEOUT else m[0] for m in got]))
        for rel, got in zip(dollar_filters, results[len(WILDCARD_FILTERS) :], strict=True):
            out.append((f"matches {run.norm(rel)}", [m if m == TIMEOUT else m[0] for m in got]))
        out.append(("publisher still connected", not pub.disconnected.is_set()))
    return out


# -- 2. QoS downgrade ------------------------------------------------------------------------


async def qos_matrix(port: int) -> Transcript:
    out: Transcript = []
    for protocol in (V311, V5):
        tag = "v5" if protocol == V5 else "v311"
        async with run_on(port) as run:
            pub = await run.connect("pub", protocol)
            subs = []
            for sub_qos in (0, 1, 2):
                sub = await run.connect(f"s{sub_qos}", protocol)
                granted = await sub.subscribe(run.t("q/+"), sub_qos)
                out.append((f"{tag} suback qos {sub_qos}", codes(granted)))
                subs.append(sub)
            await run.listen_barrier(*subs)
            for pub_qos in (0, 1, 2):
                rc = await run.publish(pub, run.t(f"q/{pub_qos}"), b"m", qos=pub_qos)
                out.append((f"{tag} publish qos {pub_qos} reason", rc))
            for sub_qos, got in enumerate(await run.barrier(pub, *subs, sort=True)):
                delivered = [m if m == TIMEOUT else (m[0], m[2]) for m in got]
                out.append((f"{tag} sub qos {sub_qos} got (topic, qos)", delivered))
    return out


# -- 3. retained messages (MQTT 3.1.1) ------------------------------------------------------


async def retained(port: int) -> Transcript:
    out: Transcript = []
    async with run_on(port) as run:
        pub = await run.connect("pub")
        await run.publish(pub, run.t("r/a"), b"a1", qos=1, retain=True)
        await run.publish(pub, run.t("r/b"), b"b1", qos=0, retain=True)

        s1 = await run.connect("s1")
        await run.listen_barrier(s1)
        await s1.subscribe(run.t("r/#"), 1)
        out.append(("s1 on subscribe", await run.sync_retained(s1)))

        await run.publish(pub, run.t("r/a"), b"a2", qos=1, retain=True)
        await run.publish(pub, run.t("r/c"), b"c1", qos=1)
        out.append(("s1 live", (await run.barrier(pub, s1))[0]))

        s2 = await run.connect("s2")
        await s2.subscribe(run.t("r/#"), 1)
        out.append(("s2 on subscribe (a replaced)", await run.sync_retained(s2)))

        await run.publish(pub, run.t("r/b"), b"", qos=1, retain=True)
        out.append(("s1 live after clearing b", (await run.barrier(pub, s1))[0]))

        s3 = await run.connect("s3")
        await s3.subscribe(run.t("r/#"), 0)
        out.append(("s3 on subscribe (b cleared)", await run.sync_retained(s3)))

        # Subscribing again to an identical filter re-sends the retained messages (3.8.4).
        await s1.subscribe(run.t("r/#"), 1)
        out.append(("s1 on re-subscribe", await run.sync_retained(s1)))
    return out


# -- 4. wills --------------------------------------------------------------------------------


async def wills(port: int) -> Transcript:
    out: Transcript = []
    async with run_on(port) as run:
        watcher = await run.connect("watch", V5)
        await watcher.subscribe(run.t("will/#"), 1)
        await run.listen_barrier(watcher)
        pub = await run.connect("pub")

        c1 = run.client("c1")
        c1.will_set(run.t("will/c1"), b"c1 gone", qos=1)
        await c1.connect()
        await c1.abort()
        out.append(("v311 will after socket close", run.msg(await watcher.get(), props=True)))

        c2 = run.client("c2", V5)
        will_props = {"ContentType": "text/plain", "UserProperty": [("why", "crash")]}
        c2.will_set(run.t("will/c2"), b"c2 gone", qos=1, properties=will_props)
        await c2.connect()
        await c2.abort()
        out.append(("v5 will after socket close", run.msg(await watcher.get(), props=True)))

        c3 = run.client("c3", V5)
        c3.will_set(run.t("will/c3"), b"c3 asked", qos=1)
        await c3.connect()
        await c3.close(reason_code=0x04)  # Disconnect with Will Message
        out.append(("v5 will after DISCONNECT 0x04", run.msg(await watcher.get(), props=True)))

        c4 = run.client("c4")
        c4.will_set(run.t("will/c4"), b"c4 must not", qos=1)
        await c4.connect()
        await c4.close()
        c5 = run.client("c5", V5)
        c5.will_set(run.t("will/c5"), b"c5 must not", qos=1)
        await c5.connect()
        await c5.close()
        # The DISCONNECTs were sent before the barrier was published, but on other
        # connections: a short bounded wait covers a server that reads them a little later.
        await trio.sleep(0.3)
        out.append(("nothing after clean DISCONNECT", (await run.barrier(pub, watcher))[0]))

        c6 = run.client("c6")
        c6.will_set(run.t("will/r"), b"retained will", qos=1, retain=True)
        run.retained.add(run.t("will/r"))
        await c6.connect()
        await c6.abort()
        out.append(("retained will, live", run.msg(await watcher.get())))
        late = await run.connect("late")
        await late.subscribe(run.t("will/r"), 1)
        out.append(("retained will, on subscribe", await run.sync_retained(late)))
    return out


# -- 5. persistent sessions --------------------------------------------------------------------


async def persistent_sessions(port: int) -> Transcript:
    out: Transcript = []
    keep = {"SessionExpiryInterval": 300}
    cases: list[tuple[str, int, dict[str, Any]]] = [
        ("v311 clean_session=0", V311, {}),
        ("v5 clean_start=0 expiry=300", V5, {"clean_start": True, "properties": keep}),
        ("v5 clean_start=0 expiry=0", V5, {"clean_start": True}),
    ]
    for tag, protocol, first in cases:
        async with run_on(port) as run:
            pub = await run.connect("pub", protocol)
            sub = run.client("ps", protocol, clean_session=False)
            await sub.connect(**first)
            out.append((f"{tag}: first connect session present", sub.session_present))
            await sub.subscribe(run.t("s/#"), 1)
            await sub.close()

            for i, qos in enumerate((1, 2, 1, 0), 1):
                await run.publish(pub, run.t(f"s/{i}"), f"m{i} q{qos}".encode(), qos=qos)

            again = run.client("ps", protocol, clean_session=False)
            if protocol == V5:
                props = keep if "expiry=300" in tag else {}
                await again.connect(clean_start=False, properties=props)
            else:
                await again.connect()
            out.append((f"{tag}: reconnect session present", again.session_present))
            await run.listen_barrier(again)
            got = (await run.barrier(pub, again))[0]
            # QoS 0 messages may or may not be queued for an offline client (3.1.2.4 / 4.1):
            # only the QoS 1 and 2 ones are compared.
            out.append((f"{tag}: queued (QoS>0)", [m for m in got if m == TIMEOUT or m[2] > 0]))
            await again.close()

            fresh = run.client("ps", protocol)
            if protocol == V5:
                await fresh.connect(clean_start=True)
            else:
                await fresh.connect()
            out.append((f"{tag}: clean reconnect session present", fresh.session_present))
            await fresh.close()
    return out


# -- 6. unsubscribe --------------------------------------------------------------------------


async def unsubscribe(port: int) -> Transcript:
    out: Transcript = []
    for protocol in (V311, V5):
        tag = "v5" if protocol == V5 else "v311"
        async with run_on(port) as run:
            pub = await run.connect("pub", protocol)
            sub = await run.connect("sub", protocol)
            await sub.subscribe(run.t("u/a"), 1)
            await sub.subscribe(run.t("u/b"), 1)
            await run.listen_barrier(sub)
            await run.publish(pub, run.t("u/a"), b"before", qos=1)
            out.append((f"{tag} before", (await run.barrier(pub, sub))[0]))

            out.append((f"{tag} unsuback u/a", codes(await sub.unsubscribe(run.t("u/a")))))
            out.append((f"{tag} unsuback never", codes(await sub.unsubscribe(run.t("u/none")))))
            await run.publish(pub, run.t("u/a"), b"after", qos=1)
            await run.publish(pub, run.t("u/b"), b"still", qos=1)
            out.append((f"{tag} after", (await run.barrier(pub, sub))[0]))
    return out


# -- 7. MQTT 5 features ----------------------------------------------------------------------


async def mqtt5_features(port: int) -> Transcript:
    out: Transcript = []
    async with run_on(port) as run:
        pub = await run.connect("pub", V5)

        # Properties carried end to end, and the subscription identifier.
        sub = await run.connect("sub", V5)
        granted = await sub.subscribe(run.t("p/#"), 1, properties={"SubscriptionIdentifier": 42})
        out.append(("suback with subscription id", codes(granted)))
        plain = await run.connect("plain", V5)
        await plain.subscribe(run.t("p/#"), 2)
        await run.listen_barrier(sub, plain)
        props = {
            "UserProperty": [("k", "v"), ("k", "v2"), ("a", "b")],
            "ResponseTopic": run.t("p/reply"),
            "CorrelationData": b"\x00\x01corr",
            "ContentType": "text/plain; charset=utf-8",
            "PayloadFormatIndicator": 1,
            "MessageExpiryInterval": 60,
        }
        rc = await run.publish(pub, run.t("p/x"), "héllo".encode(), qos=1, properties=props)
        out.append(("puback with subscribers", rc))
        await run.publish(pub, run.t("p/bare"), b"no properties", qos=2)
        got_sub, got_plain = await run.barrier(pub, sub, plain, props=True)
        out.append(("delivered with subscription id", got_sub))
        out.append(("delivered without subscription id", got_plain))

        # The PUBACK reason code when nobody is subscribed: 0x10, not 0x00. (Mosquitto sends
        # 0x00 in the PUBREC of a QoS 2 publish; 0x10 is a MAY, so that is not compared.)
        out.append(("puback no subscribers", await run.publish(pub, run.t("none/1"), b"x", 1)))

        # No Local: a client does not get its own messages back, but gets others'.
        nl = await run.connect("nl", V5)
        await nl.subscribe(run.t("nl/#"), 1, no_local=True)
        other = await run.connect("other", V5)
        await other.subscribe(run.t("nl/#"), 1)
        await run.listen_barrier(nl, other)
        await run.publish(pub, run.t("nl/from-pub"), b"theirs", qos=1)
        out.append(("no-local: others' message", run.msg(await nl.get())))
        await run.publish(nl, run.t("nl/from-self"), b"mine", qos=1)
        # nl publishes the barrier itself: same connection, so it follows "mine".
        out.append(("no-local: own message", (await run.barrier(nl, nl))[0]))
        out.append(("no-local: other subscriber", (await run.barrier(pub, other))[0]))

        # Retain As Published.
        rap = await run.connect("rap", V5)
        await rap.subscribe(run.t("rap/#"), 1, retain_as_published=True)
        norap = await run.connect("norap", V5)
        await norap.subscribe(run.t("rap/#"), 1)
        await run.listen_barrier(rap, norap)
        await run.publish(pub, run.t("rap/x"), b"kept", qos=1, retain=True)
        got_rap, got_norap = await run.barrier(pub, rap, norap)
        out.append(("retain-as-published=1 live", got_rap))
        out.append(("retain-as-published=0 live", got_norap))
        late = await run.connect("raplate", V5)
        await late.subscribe(run.t("rap/#"), 1)
        out.append(("retain-as-published=0 on subscribe", await run.sync_retained(late)))

        # Retain Handling.
        await run.publish(pub, run.t("rh/x"), b"retained", qos=1, retain=True)
        c = await run.connect("rh", V5)
        for step, rh in (("new", 0), ("existing", 0), ("existing", 1), ("existing", 2)):
            await c.subscribe(run.t("rh/#"), 1, retain_handling=rh)
            out.append((f"retain-handling={rh} {step} subscription", await run.sync_retained(c)))
        for rh in (1, 2):
            d = await run.connect(f"rh{rh}", V5)
            await d.subscribe(run.t("rh/#"), 1, retain_handling=rh)
            out.append((f"retain-handling={rh} new subscription", await run.sync_retained(d)))
    return out


# -- 8. shared subscriptions -------------------------------------------------------------------


async def shared_subscriptions(port: int) -> Transcript:
    out: Transcript = []
    async with run_on(port) as run:
        pub = await run.connect("pub", V5)
        members = []
        for name in ("m1", "m2"):
            member = await run.connect(name, V5)
            granted = await member.subscribe(f"$share/g/{run.t('sh/#')}", 1)
            out.append((f"suback {name}", codes(granted)))
            members.append(member)
        watcher = await run.connect("all", V5)
        await watcher.subscribe(run.t("sh/#"), 1)
        await run.listen_barrier(*members, watcher)
        for i in range(10):
            await run.publish(pub, run.t(f"sh/{i}"), f"m{i}".encode(), qos=1)
        got1, got2, got_all = await run.barrier(pub, *members, watcher, sort=True)
        out.append(("members' union", sorted(got1 + got2, key=repr)))
        out.append(("members disjoint", not set(got1) & set(got2)))
        out.append(("non-shared subscriber", got_all))
    return out


# -- 9. mosquitto_pub / mosquitto_sub ----------------------------------------------------------


class Lines:
    """A subprocess's stdout, line by line."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.buffer = b""
        self.eof = False

    async def line(self) -> str | None:
        while b"\n" not in self.buffer:
            if self.eof:
                return None
            with trio.move_on_after(BARRIER_WAIT * 2):
                chunk = await self.stream.receive_some()
                self.eof = not chunk
                self.buffer += chunk
                continue
            return TIMEOUT
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    async def until(self, marker: str) -> list[str]:
        """The lines before the first one that contains marker (dropped)."""
        lines = []
        while (line := await self.line()) is not None:
            if line == TIMEOUT or marker in line:
                return lines if line != TIMEOUT else [*lines, TIMEOUT]
            lines.append(line)
        return lines


async def cli_clients(port: int) -> Transcript:
    out: Transcript = []
    host = ["-h", "127.0.0.1", "-p", str(port)]
    processes: list[trio.Process] = []

    async def pub(*argv: str) -> int:
        result = await trio.run_process(
            ["mosquitto_pub", *host, *argv], check=False, capture_stderr=True
        )
        return result.returncode

    async def sub(*argv: str) -> tuple[trio.Process, Lines]:
        process = await trio.lowlevel.open_process(
            ["mosquitto_sub", *host, "-W", "25", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        return process, Lines(process)

    async with run_on(port) as run:
        ready, end = run.barrier_topic("ready"), run.barrier_topic("end")
        run.retained.add(ready)
        retained_topic = run.t("cli/retained")
        run.retained.add(retained_topic)
        fmt5 = "%t|q%q|r%r|%p|C=%C|F=%F|R=%R|D=%D|P=%P"
        fmt3 = "%t|q%q|r%r|%p"
        try:
            out.append(("pub ready", await pub("-r", "-q", "1", "-t", ready, "-m", "ready")))
            sub5, lines5 = await sub(
                *("-V", "5", "-q", "2", "-F", fmt5, "-t", run.t("cli/#"), "-t", ready),
                *("-t", end, "-i", run.client_id("cli5")),
                *("--will-topic", run.t("will-cli/5"), "--will-payload", "sub5 killed"),
                *("--will-qos", "1"),
            )
            _, lines3 = await sub(
                *("-V", "311", "-q", "1", "-F", fmt3, "-t", run.t("cli/#"), "-t", ready),
                *("-t", end),
            )
            will_sub, will_lines = await sub(
                *("-V", "311", "-q", "1", "-F", fmt3, "-t", run.t("will-cli/#"), "-t", ready),
                *("-C", "2"),
            )
            for lines in (lines5, lines3, will_lines):
                # The retained "ready" message proves the subscriptions are in place.
                await lines.until(ready)

            publishes = [
                ("-V", "311", "-q", "0", "-t", run.t("cli/q0"), "-m", "zero"),
                ("-V", "311", "-q", "1", "-t", run.t("cli/q1"), "-m", "one"),
                ("-V", "5", "-q", "2", "-t", run.t("cli/q2"), "-m", "two"),
                (
                    *("-V", "5", "-q", "1", "-t", run.t("cli/props"), "-m", "props"),
                    *("-D", "publish", "user-property", "k", "v"),
                    *("-D", "publish", "content-type", "text/plain"),
                    *("-D", "publish", "payload-format-indicator", "1"),
                    *("-D", "publish", "response-topic", run.t("cli/reply")),
                    *("-D", "publish", "correlation-data", "corr"),
                ),
                ("-V", "311", "-q", "1", "-r", "-t", retained_topic, "-m", "kept"),
                ("-V", "5", "-q", "2", "-t", end, "-m", "end"),
            ]
            rcs = [await pub(*argv) for argv in publishes]
            out.append(("mosquitto_pub exit codes", rcs))
            # libmosquitto hands a QoS 2 message over on PUBREL, so arrival order varies: sort.
            out.append(("mosquitto_sub -V 5 -q 2", sorted(map(run.norm, await lines5.until(end)))))
            out.append(("mosquitto_sub -V 311", sorted(map(run.norm, await lines3.until(end)))))

            _, late = await sub("-V", "5", "-F", fmt3, "-t", retained_topic, "-C", "1")
            out.append(("late mosquitto_sub gets retained", [run.norm(await late.line() or "")]))
            out.append(("clear retained", await pub("-r", "-n", "-q", "1", "-t", retained_topic)))
            _, cleared = await sub("-V", "5", "-F", fmt3, "-t", retained_topic, "-t", ready)
            out.append(("after clearing", sorted(map(run.norm, await cleared.until(ready)))))

            sub5.send_signal(signal.SIGKILL)
            out.append(("will of killed mosquitto_sub", [run.norm(await will_lines.line() or "")]))
            with trio.move_on_after(BARRIER_WAIT):
                out.append(("will watcher exit code", await will_sub.wait()))
        finally:
            for process in processes:
                with contextlib.suppress(OSError):
                    process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
    return out


SCENARIOS: dict[str, Scenario] = {
    "wildcards": wildcards,
    "qos_matrix": qos_matrix,
    "retained": retained,
    "wills": wills,
    "persistent_sessions": persistent_sessions,
    "unsubscribe": unsubscribe,
    "mqtt5_features": mqtt5_features,
    "shared_subscriptions": shared_subscriptions,
    "cli_clients": cli_clients,
}


def cli_available() -> bool:
    return shutil.which("mosquitto_sub") is not None and shutil.which("mosquitto_pub") is not None


async def _main(port: int, names: Sequence[str]) -> int:
    runs = {name: functools.partial(fn, port) for name, fn in SCENARIOS.items()}
    return await check_stability(runs, names, 60)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("MQTT_PORT", "1883"))
    sys.exit(trio.run(_main, port, sys.argv[2:]))
