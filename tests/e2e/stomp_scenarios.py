"""STOMP interoperability scenarios, run unchanged against RabbitMQ's STOMP plugin and the gateway.

Each scenario is ``async def scenario(host, port, login, passcode) -> Transcript``: it drives
stomp.py clients (and, for malformed input, a raw socket) against one server and returns what
they observed as plain data, a list of ``(step, observation)`` pairs. Two servers that behave
the same produce equal transcripts.

Every run uses its own names (``interop-<uid>-...``; the uid is written ``U`` in transcripts).
RabbitMQ keeps ``/queue/`` queues after the run, so each run deletes the queues it named with
``rabbitmqctl delete_queue`` (when the server is RabbitMQ and the command is there), and ends
its durable subscription with UNSUBSCRIBE ``durable:true``.

Absence is proved with barrier messages and receipts, not sleeps. A message that does not
come within BARRIER_WAIT is written ``<timeout>``, so a misbehaving server still produces a
transcript to compare; a server ERROR that ends a scenario early is written
``("failed", <the ERROR's message header>)``.

Where RabbitMQ (3.10) and the gateway legitimately differ, the transcripts leave it out:

| what                        | RabbitMQ                  | gateway              | transcript    |
|-----------------------------|---------------------------|----------------------|---------------|
| CONNECTED ``server``        | ``RabbitMQ/3.10.8``       | ``gateway/0.1.0``    | NAME/VERSION  |
| CONNECTED ``session``       | ``session-<base64>``      | ``stomp-N-<hex>``    | present       |
| ``message-id``, ``ack``     | ``T_<sub>@@session@@N``   | ``N``                | dropped       |
| ``receipt`` on MESSAGE (1)  | copied from the SEND      | absent               | dropped       |
| ``x-delivery-count``        | quorum queues only        | always               | dropped       |
| temp-queue ``reply-to`` (2) | ``/reply-queue/amq.gen-`` | ``/queue/$temp/...`` | <rewritten>   |
| reply ``destination``       | ``/queue/amq.gen-...``    | ``/queue/$temp/...`` | <temp queue>  |
| prefixes (3)                | + ``/exchange/``, ...     | queue, topic, temp   | common three  |
| dead-lettering (4)          | by policy / arguments     | ``[[queues]]``       | not compared  |
| heart-beat offer            | its own                   | ``heartbeat`` key    | none asked    |
| RECEIPT in a transaction    | at COMMIT                 | at once              | none asked    |
| refused frame (5)           | see (5)                   | ERROR, then close    | "refused"     |
| ``#`` in a topic pattern    | any word (``#.c``)        | last word only (6)   | not compared  |

1. RabbitMQ copies every SEND header it does not consume, ``receipt`` included, into the
   MESSAGE.
2. RabbitMQ subscribes the sender to its temporary queue itself (replies come with
   ``subscription:/temp-queue/NAME``) and shows other clients a ``/reply-queue/`` name.
3. RabbitMQ also accepts ``/exchange/``, ``/amq/queue/`` and ``/reply-queue/``; the scenarios
   use ``/queue/``, ``/topic/``, ``/temp-queue/``, and ``/bogus/`` as the unknown prefix.
4. RabbitMQ dead-letters only with a policy or ``x-dead-letter-*`` queue arguments, and then
   with its ``x-death`` table; the gateway's ``dead_letter`` and ``x-death-*`` headers are
   covered by tests/e2e/test_stomp.py.
5. RabbitMQ answers an unknown command, an unknown destination and a frame before CONNECT
   with an ERROR but keeps the connection open, and closes without an ERROR on a bad 1.2
   escape or a body not ending in NUL; the gateway sends an ERROR and closes (the spec's
   way). Either counts as "refused".
6. Topic patterns become MQTT filters, where ``#`` ends a filter.

``python -m tests.e2e.stomp_scenarios [PORT] [NAME...]`` runs scenarios against one server
(RabbitMQ's 61613 by default, as guest/guest) twice and prints the transcripts and whether
they are stable.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from uuid import uuid4

import trio

from tests.e2e.scenario_runner import check_stability
from tests.stomp_client import RawStomp, Received, Stomp, StompFailure

Transcript = list[tuple[str, Any]]
Scenario = Callable[[str, int, str, str], Awaitable[Transcript]]

BARRIER_WAIT = 3.0
TIMEOUT = "<timeout>"
# RabbitMQ's durable topic subscription headers (with the subscription id as its name).
DURABLE = {"durable": "true", "auto-delete": "false"}
# Headers whose values are server-specific (see the table above).
VOLATILE = frozenset({"message-id", "ack", "receipt", "x-delivery-count"})


class Run:
    """One scenario run against one server: unique names, clients, and cleanup."""

    def __init__(self, host: str, port: int, login: str, passcode: str) -> None:
        self.host = host
        self.port = port
        self.login = login
        self.passcode = passcode
        self.uid = uuid4().hex[:8]
        self.clients: list[Stomp] = []
        self.raw: list[RawStomp] = []
        self.queues: set[str] = set()
        # (destination, id) of durable subscriptions to end at cleanup.
        self.durable: list[tuple[str, str]] = []
        self.server = ""

    # -- names -------------------------------------------------------------------------------

    def q(self, name: str) -> str:
        """A /queue/ destination of this run (deleted from RabbitMQ at the end)."""
        full = f"interop-{self.uid}-{name}"
        self.queues.add(full)
        return f"/queue/{full}"

    def t(self, name: str) -> str:
        """A /topic/ destination of this run (``name`` may hold dots and wildcards)."""
        return f"/topic/interop-{self.uid}.{name}"

    def norm(self, text: str) -> str:
        return text.replace(self.uid, "U")

    # -- clients -----------------------------------------------------------------------------

    async def client(self, version: str = "1.2", *, headers: dict[str, str] | None = None) -> Stomp:
        """A connected stomp.py client (host header "/", RabbitMQ's default virtual host)."""
        client = Stomp(self.port, version, host=self.host, vhost=None if version == "1.0" else "/")
        self.clients.append(client)
        frame = await client.connect(self.login, self.passcode, headers)
        self.server = frame.get("server", "")
        return client

    async def raw_client(self) -> RawStomp:
        raw = await RawStomp.open(self.port, self.host)
        self.raw.append(raw)
        return raw

    async def raw_connect(self, raw: RawStomp, version: str = "1.2") -> str:
        answer = await raw.connect(version, login=self.login, passcode=self.passcode)
        return answer.command

    # -- messages ----------------------------------------------------------------------------

    def view(self, message: Received | str) -> Any:
        """(body, headers) of a MESSAGE with the server-specific headers left out."""
        if isinstance(message, str):
            return message
        headers = {
            key: self.norm(value) for key, value in message.headers.items() if key not in VOLATILE
        }
        return (self.norm(message.text), dict(sorted(headers.items())))

    async def next(self, client: Stomp) -> Received | str:
        """The client's next MESSAGE, or TIMEOUT."""
        try:
            return await client.get(BARRIER_WAIT)
        except queue.Empty:
            return TIMEOUT

    async def body(self, client: Stomp) -> str:
        message = await self.next(client)
        return message if isinstance(message, str) else self.norm(message.text)

    async def until(self, client: Stomp, last: str) -> list[str]:
        """Bodies up to and including ``last`` (or TIMEOUT)."""
        got: list[str] = []
        while not got or got[-1] not in (last, TIMEOUT):
            got.append(await self.body(client))
        return got

    # -- cleanup -----------------------------------------------------------------------------

    async def cleanup(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
        for raw in self.raw:
            with contextlib.suppress(Exception):
                await raw.aclose()
        if self.durable:
            # Attach to each durable subscription once more and end it (a no-op when the
            # scenario did already): RabbitMQ keeps its queue otherwise.
            with contextlib.suppress(Exception):
                ender = await self.client()
                for destination, sub_id in self.durable:
                    await ender.subscribe(destination, id=sub_id, headers=DURABLE)
                    await ender.unsubscribe(sub_id, headers={"durable": "true"})
                await ender.close()
        ctl = shutil.which("rabbitmqctl")
        if self.server.startswith("RabbitMQ/") and ctl is not None and self.queues:
            async with trio.open_nursery() as nursery:
                for name in sorted(self.queues):
                    nursery.start_soon(_delete_queue, ctl, name)


async def _delete_queue(ctl: str, name: str) -> None:
    with contextlib.suppress(OSError):
        await trio.run_process(
            [ctl, "delete_queue", name], capture_stdout=True, capture_stderr=True, check=False
        )


@contextlib.asynccontextmanager
async def run_on(host: str, port: int, login: str, passcode: str) -> AsyncIterator[Run]:
    run = Run(host, port, login, passcode)
    try:
        yield run
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(15):
            await run.cleanup()


async def scenario_body(out: Transcript, body: Awaitable[None]) -> Transcript:
    """Run ``body``; an ERROR from the server ends the transcript with ("failed", message)."""
    try:
        await body
    except StompFailure as failure:
        error = failure.error
        out.append(("failed", "<closed>" if error is None else error.get("message")))
    return out


# -- 1. CONNECTED --------------------------------------------------------------------------------


async def connected(host: str, port: int, login: str, passcode: str) -> Transcript:
    """CONNECTED for each protocol version: version, server, session and heart-beat headers."""
    out: Transcript = []

    async def body(run: Run) -> None:
        for version in ("1.0", "1.1", "1.2"):
            client = await run.client(version)
            frame = client.connected_frame
            assert frame is not None
            server = frame.get("server", "")
            name, _, release = server.partition("/")
            out.append(
                (
                    f"{version} CONNECTED",
                    {
                        "version": frame.get("version"),
                        "server is NAME/VERSION": bool(name and release),
                        "session": bool(frame.get("session")),
                        "heart-beat": frame.get("heart-beat", "0,0"),
                    },
                )
            )
            await client.disconnect()

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 2. headers ----------------------------------------------------------------------------------


async def headers(host: str, port: int, login: str, passcode: str) -> Transcript:
    """SEND headers (persistent, priority, correlation-id, reply-to, content-type, custom)
    as a queue subscriber sees them, in each protocol version."""
    out: Transcript = []

    async def body(run: Run) -> None:
        for version in ("1.0", "1.1", "1.2"):
            destination = run.q(f"headers-{version}")
            consumer = await run.client(version)
            await consumer.subscribe(destination, id="h")
            producer = await run.client(version)
            sent = {
                "persistent": "true",
                "priority": "6",
                "correlation-id": f"corr-{version}",
                "reply-to": run.q("replies"),
                "content-type": "text/plain",
                "x-tenant": "acme",
                "x-colon": "a:b",
            }
            if version != "1.0":
                sent |= {"x-escapes": "back\\slash new\nline"}
            await producer.send(destination, f"hello {version}", sent)
            out.append((f"{version} MESSAGE", run.view(await run.next(consumer))))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 3. competing consumers ----------------------------------------------------------------------


async def competing_consumers(host: str, port: int, login: str, passcode: str) -> Transcript:
    """Two consumers of one queue share its messages: disjoint sets whose union is all."""
    out: Transcript = []

    async def body(run: Run) -> None:
        destination = run.q("work")
        consumers = [await run.client(), await run.client()]
        for consumer in consumers:
            await consumer.subscribe(destination, id="work")
        producer = await run.client()
        sent = [f"job-{i:02}" for i in range(10)]
        for text in sent:
            await producer.send(destination, text)
        got: list[list[str]] = [[], []]
        with trio.move_on_after(BARRIER_WAIT):
            while sum(map(len, got)) < len(sent):
                for mine, consumer in zip(got, consumers, strict=True):
                    mine.extend(m.text for m in consumer.pending())
                await trio.sleep(0.01)
        out.append(("disjoint", set(got[0]).isdisjoint(got[1])))
        out.append(("union", sorted(got[0] + got[1])))
        out.append(("both consumers got some", all(got)))
        out.append(("each in send order", all(g == sorted(g) for g in got)))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 4. a queue's backlog -------------------------------------------------------------------------


async def queue_backlog(host: str, port: int, login: str, passcode: str) -> Transcript:
    """Messages sent to a queue before anyone subscribes go to the first subscriber, in order,
    in each ack mode."""
    out: Transcript = []

    async def body(run: Run) -> None:
        for mode in ("auto", "client", "client-individual"):
            destination = run.q(f"backlog-{mode}")
            producer = await run.client()
            for text in ("waiting-1", "waiting-2"):
                await producer.send(destination, text)
            consumer = await run.client()
            await consumer.subscribe(destination, id="late", ack=mode)
            await producer.send(destination, "barrier")
            out.append((f"{mode} subscriber", await run.until(consumer, "barrier")))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 5. NACK -------------------------------------------------------------------------------------


async def nack_redelivery(host: str, port: int, login: str, passcode: str) -> Transcript:
    """NACK returns a message for redelivery, marked redelivered (1.1 and 1.2)."""
    out: Transcript = []

    async def body(run: Run) -> None:
        for version in ("1.1", "1.2"):
            destination = run.q(f"nack-{version}")
            consumer = await run.client(version)
            await consumer.subscribe(destination, id="n", ack="client-individual")
            producer = await run.client(version)
            await producer.send(destination, "again")
            for attempt in (1, 2, 3):
                message = await run.next(consumer)
                if isinstance(message, str):
                    out.append((f"{version} delivery {attempt}", message))
                    break
                out.append(
                    (f"{version} delivery {attempt}", (message.text, message.get("redelivered")))
                )
                if attempt < 3:
                    await consumer.nack(message)
                else:
                    await consumer.ack(message)
            await producer.send(destination, "barrier")
            out.append((f"{version} after ack", await run.until(consumer, "barrier")))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 6. ack modes --------------------------------------------------------------------------------


async def ack_modes(host: str, port: int, login: str, passcode: str) -> Transcript:
    """client (cumulative) vs client-individual: a consumer acks the second of three and
    leaves; what a waiting second consumer gets."""
    out: Transcript = []

    async def body(run: Run) -> None:
        for version, mode in (("1.0", "client"), ("1.2", "client"), ("1.2", "client-individual")):
            destination = run.q(f"acks-{version}-{mode}")
            first = await run.client(version)
            await first.subscribe(destination, id="a", ack=mode)
            producer = await run.client(version)
            for text in ("m1", "m2", "m3"):
                await producer.send(destination, text)
            got = [await run.next(first) for _ in range(3)]
            out.append((f"{version} {mode} first", [run.view(m)[0] for m in got]))
            if any(isinstance(m, str) for m in got):
                continue
            second = await run.client(version)
            await second.subscribe(destination, id="a")
            await first.ack(got[1])  # type: ignore[arg-type]
            await first.disconnect()
            await producer.send(destination, "barrier")
            back = []
            while not back or back[-1][0] in ("m1", "m2", "m3"):
                message = await run.next(second)
                if isinstance(message, str):
                    back.append((message, ""))
                else:
                    back.append((message.text, message.get("redelivered", "")))
            out.append((f"{version} {mode} second", back))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 7. transactions -----------------------------------------------------------------------------


async def transactions(host: str, port: int, login: str, passcode: str) -> Transcript:
    """SENDs in a transaction arrive at COMMIT, after a SEND outside it; ABORT drops them;
    an ACK in an aborted transaction is undone."""
    out: Transcript = []

    async def body(run: Run) -> None:
        destination = run.q("tx")
        consumer = await run.client()
        await consumer.subscribe(destination, id="t")
        producer = await run.client()
        await producer.begin("t1")
        # No receipts inside a transaction: RabbitMQ sends them only at COMMIT.
        await producer.send(destination, "in-t1-a", transaction="t1", receipt=False)
        await producer.send(destination, "in-t1-b", transaction="t1", receipt=False)
        await producer.send(destination, "outside")
        out.append(("before commit", [await run.body(consumer)]))
        await producer.commit("t1")
        out.append(("after commit", [await run.body(consumer), await run.body(consumer)]))
        await producer.begin("t2")
        await producer.send(destination, "in-t2", transaction="t2", receipt=False)
        await producer.abort("t2")
        await producer.send(destination, "barrier")
        out.append(("after abort", await run.until(consumer, "barrier")))

        acked = run.q("txack")
        first = await run.client()
        await first.subscribe(acked, id="a", ack="client-individual")
        await producer.send(acked, "m1")
        message = await run.next(first)
        out.append(("delivered", run.view(message)[0]))
        if isinstance(message, str):
            return
        await first.begin("t3")
        await first.ack(message, transaction="t3", receipt=False)
        await first.abort("t3")
        second = await run.client()
        await second.subscribe(acked, id="a", ack="client-individual")
        await first.disconnect()
        again = await run.next(second)
        out.append(
            (
                "ack in aborted transaction",
                again if isinstance(again, str) else (again.text, again.get("redelivered")),
            )
        )
        if isinstance(again, str):
            return
        await second.begin("t4")
        await second.ack(again, transaction="t4", receipt=False)
        await second.commit("t4")
        third = await run.client()
        await third.subscribe(acked, id="a")
        await second.disconnect()
        await producer.send(acked, "barrier")
        out.append(("ack in committed transaction", await run.until(third, "barrier")))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 8. receipts ---------------------------------------------------------------------------------


async def receipts(host: str, port: int, login: str, passcode: str) -> Transcript:
    """RECEIPTs for SUBSCRIBE, SEND, BEGIN/COMMIT and DISCONNECT; the server closes after the
    DISCONNECT's."""
    out: Transcript = []

    async def body(run: Run) -> None:
        for version in ("1.0", "1.1", "1.2"):
            client = await run.client(version)
            destination = run.q(f"rcpt-{version}")
            steps = {
                "SUBSCRIBE": await client.subscribe(destination, id="r"),
                "SEND": await client.send(destination, "x"),
                "BEGIN": await client.begin("t"),
                "COMMIT": await client.commit("t"),
                "DISCONNECT": await client.disconnect(),
            }
            for step, receipt in steps.items():
                out.append((f"{version} {step}", None if receipt is None else receipt.command))
        raw = await run.raw_client()
        out.append(("raw CONNECT", await run.raw_connect(raw)))
        await raw.send(b"DISCONNECT\nreceipt:bye-77\n\n\x00")
        frame = await raw.frame()
        out.append(("raw DISCONNECT", (frame.command, frame.get("receipt-id"))))
        with trio.move_on_after(BARRIER_WAIT):
            out.append(("raw closed", await raw.closed()))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 9. temp queues ------------------------------------------------------------------------------


async def temp_queue(host: str, port: int, login: str, passcode: str) -> Transcript:
    """Request/reply: the requester SENDs with reply-to:/temp-queue/r (and no SUBSCRIBE); the
    responder replies to the reply-to it received; the reply reaches the requester."""
    out: Transcript = []

    async def body(run: Run) -> None:
        service = run.q("service")
        responder = await run.client()
        await responder.subscribe(service, id="svc")
        requester = await run.client()
        await requester.send(service, "ping", {"reply-to": "/temp-queue/r", "correlation-id": "c1"})
        request = await run.next(responder)
        if isinstance(request, str):
            out.append(("request", request))
            return
        reply_to = request.get("reply-to", "")
        out.append(("request", request.text))
        out.append(("reply-to seen", "<rewritten>" if reply_to != "/temp-queue/r" else reply_to))
        await responder.send(reply_to, "pong", {"correlation-id": "c1"})
        reply = await run.next(requester)
        if isinstance(reply, str):
            out.append(("reply", reply))
            return
        out.append(
            (
                "reply",
                {
                    "body": reply.text,
                    "subscription": reply.get("subscription"),
                    "correlation-id": reply.get("correlation-id"),
                    "destination": "<temp queue>"
                    if reply.get("destination", "").startswith("/queue/")
                    else reply.get("destination"),
                },
            )
        )

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 10. wildcards --------------------------------------------------------------------------------


async def wildcards(host: str, port: int, login: str, passcode: str) -> Transcript:
    """/topic/P.a.* matches one more word, /topic/P.a.# any number (zero included)."""
    out: Transcript = []

    async def body(run: Run) -> None:
        subscribers = {}
        for pattern in ("a.*", "a.#", "a.*.c"):
            client = await run.client()
            await client.subscribe(run.t(pattern), id="w")
            subscribers[pattern] = client
        producer = await run.client()
        for topic in ("a.b", "a.b.c", "a", "b.c", "a.x.y.c", "end"):
            await producer.send(run.t(topic), topic)
        # "end" matches none of them: a barrier that matches each subscription comes last.
        for pattern in subscribers:
            await producer.send(run.t(pattern.replace("*", "z").replace("#", "z")), "barrier")
        for pattern, client in subscribers.items():
            got = await run.until(client, "barrier")
            out.append((f"/topic/P.{pattern}", got))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 11. durable topic subscription --------------------------------------------------------------


async def durable_subscription(host: str, port: int, login: str, passcode: str) -> Transcript:
    """RabbitMQ's durable topic subscription (durable:true, auto-delete:false, id) keeps the
    messages published while its subscriber is away; UNSUBSCRIBE durable:true ends it."""
    out: Transcript = []

    async def body(run: Run) -> None:
        topic = run.t("news")
        sub_id = f"interop-{run.uid}-news"
        sub_headers = dict(DURABLE)
        run.durable.append((topic, sub_id))
        producer = await run.client()
        subscriber = await run.client()
        await subscriber.subscribe(topic, id=sub_id, headers=sub_headers)
        await producer.send(topic, "while-connected")
        out.append(("connected", [await run.body(subscriber)]))
        await subscriber.disconnect()
        await producer.send(topic, "while-away-1")
        await producer.send(topic, "while-away-2")
        back = await run.client()
        await back.subscribe(topic, id=sub_id, headers=sub_headers)
        await producer.send(topic, "barrier")
        out.append(("after reconnecting", await run.until(back, "barrier")))
        receipt = await back.unsubscribe(sub_id, headers={"durable": "true"})
        out.append(("unsubscribe durable", None if receipt is None else receipt.command))
        await back.disconnect()
        await producer.send(topic, "after-unsubscribe")
        again = await run.client()
        await again.subscribe(topic, id=sub_id, headers=sub_headers)
        await producer.send(topic, "barrier-2")
        out.append(("after ending it", await run.until(again, "barrier-2")))
        await again.unsubscribe(sub_id, headers={"durable": "true"})

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 12. prefetch --------------------------------------------------------------------------------


async def prefetch(host: str, port: int, login: str, passcode: str) -> Transcript:
    """prefetch-count:1 with client-individual acks: the second message after the first ack."""
    out: Transcript = []

    async def body(run: Run) -> None:
        destination = run.q("pf")
        side = run.q("pf-side")
        consumer = await run.client()
        await consumer.subscribe(
            destination, id="pf", ack="client-individual", headers={"prefetch-count": "1"}
        )
        await consumer.subscribe(side, id="side")
        producer = await run.client()
        await producer.send(destination, "one")
        await producer.send(destination, "two")
        await producer.send(side, "barrier")
        first = await run.next(consumer)
        out.append(("first", run.view(first)[0]))
        out.append(("then", await run.body(consumer)))
        out.append(("nothing else before the ack", [m.text for m in consumer.pending()]))
        if isinstance(first, str):
            return
        await consumer.ack(first)
        second = await run.next(consumer)
        out.append(("after the ack", run.view(second)[0]))
        if not isinstance(second, str):
            await consumer.ack(second)

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


# -- 13. errors ----------------------------------------------------------------------------------

MALFORMED = {
    "unknown command": b"FROBNICATE\n\n\x00",
    "unknown destination prefix": b"SEND\ndestination:/bogus/x\n\nhi\x00",
    "bad escape in a 1.2 header": b"SEND\ndestination:/queue/x\nx-h:bad\\qescape\n\nhi\x00",
    "content-length without NUL": b"SEND\ndestination:/queue/x\ncontent-length:3\n\nabcdef\x00",
}


async def errors(host: str, port: int, login: str, passcode: str) -> Transcript:
    """Malformed or refused frames are refused (an ERROR, or the connection closed); a client
    on another connection is unaffected."""
    out: Transcript = []

    async def body(run: Run) -> None:
        bystander = await run.client()
        check = run.q("bystander")
        await bystander.subscribe(check, id="b")
        cases = {
            # The destination in these frames is this run's, so nothing is left behind.
            name: frame.replace(b"/queue/x", run.q("bad").encode())
            for name, frame in MALFORMED.items()
        }
        cases["frame before CONNECT"] = f"SEND\ndestination:{check}\n\nsneaky\x00".encode()
        for name, frame in cases.items():
            raw = await run.raw_client()
            if name != "frame before CONNECT":
                await run.raw_connect(raw)
            await raw.send(frame)
            try:
                answer = await raw.frame()
                # What counts is that the frame is refused, not how (see the table above).
                refused = answer.command == "ERROR"
            except EOFError:
                refused = True
            out.append((name, "refused" if refused else "accepted"))
            await raw.aclose()
            await bystander.send(check, f"after {name}")
            out.append((f"bystander after {name}", await run.body(bystander)))

    async with run_on(host, port, login, passcode) as run:
        return await scenario_body(out, body(run))


SCENARIOS: dict[str, Scenario] = {
    "connected": connected,
    "headers": headers,
    "competing_consumers": competing_consumers,
    "queue_backlog": queue_backlog,
    "nack_redelivery": nack_redelivery,
    "ack_modes": ack_modes,
    "transactions": transactions,
    "receipts": receipts,
    "temp_queue": temp_queue,
    "wildcards": wildcards,
    "durable_subscription": durable_subscription,
    "prefetch": prefetch,
    "errors": errors,
}


async def _main(port: int, names: Sequence[str]) -> int:
    runs = {
        name: functools.partial(fn, "127.0.0.1", port, "guest", "guest")
        for name, fn in SCENARIOS.items()
    }
    return await check_stability(runs, names, 120)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("STOMP_PORT", "61613"))
    sys.exit(trio.run(_main, port, sys.argv[2:]))
