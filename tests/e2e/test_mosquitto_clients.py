"""The real mosquitto_pub and mosquitto_sub programs against the gateway."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None,
    reason="mosquitto-clients is not installed (make test installs it)",
)


async def wait_for_subscriptions(gateway: Gateway, count: int) -> None:
    # mosquitto_sub cannot tell us it has subscribed, so watch the core until it has.
    while gateway.broker.subscription_count < count:  # noqa: ASYNC110
        await trio.sleep(0.02)


async def pub(port: int, topic: str, message: str, *extra: str) -> None:
    await trio.run_process(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", message, *extra]
    )


@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
async def test_mosquitto_sub_receives_what_mosquitto_pub_sends(
    gateway: Gateway, version: str
) -> None:
    port = gateway.port("mqtt")
    argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", version]
    argv += ["-t", "a/#", "-t", "x/+/z", "-v", "-C", "3", "-W", "15"]
    with trio.fail_after(NET_TIMEOUT):
        sub = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        try:
            await wait_for_subscriptions(gateway, 2)
            await pub(port, "a/b", "hi", "-V", version)
            await pub(port, "b/c", "not for us")
            await pub(port, "x/y/z", "plus")
            await pub(port, "a", "parent")
            assert sub.stdout is not None
            output = b""
            while chunk := await sub.stdout.receive_some():
                output += chunk
            assert await sub.wait() == 0
        finally:
            sub.kill()
    lines = output.decode().splitlines()
    assert lines == ["a/b hi", "x/y/z plus", "a parent"]


async def test_mosquitto_pub_qos1_and_qos2_complete(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        for qos in ("1", "2"):
            # mosquitto_pub exits non-zero if PUBACK / PUBREC+PUBCOMP never arrive.
            result = await trio.run_process(
                [
                    "mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-q",
                    qos,
                    "-t",
                    "t",
                    "-m",
                    "x",
                ],
                check=False,
                capture_stderr=True,
            )
            assert result.returncode == 0, result.stderr
