"""The systems under test: started fresh for each run on a free loopback port, measured
through /proc, and stopped after.

- ``gateway``: ``python -m gateway run`` from this repository (log level warning,
  ``sys_interval = 0``, queue and in-flight limits as Mosquitto's below), with its
  defaults otherwise: the durable store in mode ``sync`` (``store_fsync = true``) in a
  fresh data directory under the run's temporary directory.
- ``gateway-memory``, ``gateway-async``: the same with ``[gateway] durability =
  "memory"`` (nothing written) or ``"async"`` (PUBACK at once, the commit follows).
- ``mosquitto``: the Debian binary with its own configuration file (``persistence
  false``).
- ``mosquitto-persist``: the same with ``persistence true`` and a fresh
  ``persistence_location`` per run; ``autosave_interval`` is left at its default (1800 s),
  so Mosquitto writes its database every 30 minutes and at shutdown, never while a run
  measures, and its PUBACK never waits for the disk.
- ``amqtt``: the PyPI broker, from its own virtual environment ``bench/.venv-amqtt``,
  started with its ``amqtt`` command and a YAML configuration.
- ``rabbitmq-stomp``: RabbitMQ's STOMP plugin, already running on 127.0.0.1:61613; never
  started, stopped or configured here. CPU and RSS: the sum over its ``beam.smp``
  processes.
- ``rabbitmq-mqtt``: RabbitMQ's MQTT plugin, already running on 127.0.0.1:21883
  (``BENCH_RABBITMQ_MQTT_PORT``; its default 1883 is Mosquitto's here), measured like
  ``rabbitmq-stomp``: never started, stopped or configured here.
- ``coilmq``: the PyPI STOMP broker (pinned, ``COILMQ_REQ``), from its own virtual
  environment ``bench/.venv-coilmq``, started with its ``coilmq`` command and an INI
  configuration on a free port (STOMP scenarios only). Its STOMP 1.2 CONNECT wants
  ``host`` to be this machine's ``socket.getfqdn()`` (``Running.stomp_host``).
- ``external``: a broker someone else started (``--host``/``--port``, and ``--pid`` to
  have its CPU and memory read).

Nothing here ever touches port 1883 (the machine's own Mosquitto): ports come from the
kernel's ephemeral range.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

_N = TypeVar("_N", int, float)

REPO = Path(__file__).resolve().parent.parent
AMQTT_VENV = REPO / "bench" / ".venv-amqtt"
COILMQ_VENV = REPO / "bench" / ".venv-coilmq"
# The generator relies on 1.1.0's handling of host, heart-beat and ACK (docs/benchmarks.md).
COILMQ_REQ = "coilmq==1.1.0"
MOSQUITTO = "/usr/sbin/mosquitto"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SYSTEMS = ("gateway", "mosquitto", "amqtt")  # what `compare` runs by default (MQTT)
# Variants for the durability comparison, started here like SYSTEMS.
DURABLE_SYSTEMS = ("gateway-memory", "gateway-async", "mosquitto-persist")
GATEWAYS = {"gateway": None, "gateway-memory": "memory", "gateway-async": "async"}
STOMP_SYSTEMS = ("coilmq",)  # started here like SYSTEMS, STOMP scenarios only
# Already running, never started or stopped here: RabbitMQ's STOMP plugin.
RABBITMQ_STOMP = ("127.0.0.1", 61613)
RABBITMQ_MQTT = ("127.0.0.1", int(os.environ.get("BENCH_RABBITMQ_MQTT_PORT") or 21883))
EXTERNAL_SYSTEMS = ("rabbitmq-stomp", "rabbitmq-mqtt")

# Limits every broker gets, so that none drops messages the others would keep.
MAX_QUEUED = 100_000
# The durability scenarios store everything published while the subscriber is away.
MAX_QUEUED_DURABLE = 10_000_000
MAX_INFLIGHT = 100
BROKER_NOFILE = 131_072


class BrokerError(RuntimeError):
    pass


@dataclass
class Running:
    name: str
    host: str
    port: int
    pid: int | None  # the process whose CPU and memory are measured (with its children)
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    log: Path | None = None
    profile: Path | None = None
    settings: dict[str, object] = field(default_factory=dict)
    stomp_port: int | None = None  # its STOMP listener, if it has one
    stomp_host: str = "/"  # the STOMP CONNECT host header (RabbitMQ: the virtual host)
    extra_pids: tuple[int, ...] = ()  # more processes measured with ``pid`` (RabbitMQ)

    def cpu_seconds(self) -> float | None:
        if self.pid is None:
            return None
        return tree_cpu_seconds(self.pid) + sum(
            _gone_is_0(tree_cpu_seconds, p) for p in self.extra_pids
        )

    def rss_bytes(self) -> int | None:
        if self.pid is None:
            return None
        return tree_rss_bytes(self.pid) + sum(
            _gone_is_0(tree_rss_bytes, p) for p in self.extra_pids
        )

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


# ---------------------------------------------------------------------------- /proc


def _gone_is_0(read: Callable[[int], _N], pid: int) -> _N | int:
    """``read(pid)``, or 0 for a process that has exited meanwhile."""
    try:
        return read(pid)
    except OSError:
        return 0


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def children(pid: int) -> list[int]:
    """Live descendants of ``pid``."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                kids.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for kid in kids.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def process_cpu_seconds(pid: int, *, reaped_children: bool = True) -> float:
    """utime + stime (+ cutime + cstime: children already waited for) of one process."""
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
    if reaped_children:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime (fields 16, 17)
    return ticks / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    total = process_cpu_seconds(pid)
    for kid in children(pid):
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(kid)
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (all cores, not idle or iowait) since boot,
    from the ``cpu`` line of /proc/stat."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK  # user..steal, less idle and iowait
    return None


def wait_quiet(below_pct: float, timeout: float, sample: float = 2.0) -> tuple[float, float]:
    """Wait until the machine (everything: no broker or generator of ours runs now) used
    less than ``below_pct`` % of one core over ``sample`` seconds, or ``timeout`` passed:
    (seconds waited, the last sample's %). For a machine shared with other people's work."""
    start = time.monotonic()
    while True:
        a = machine_busy_seconds()
        time.sleep(sample)
        b = machine_busy_seconds()
        pct = 100 * (b - a) / sample if a is not None and b is not None else 0.0
        waited = time.monotonic() - start
        if pct < below_pct or waited >= timeout:
            return round(waited, 1), round(pct, 1)


def nofile_limit(pid: int) -> int | None:
    """The soft open-file limit of a process (from /proc/PID/limits)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def tree_rss_bytes(pid: int) -> int:
    total = rss_bytes(pid)
    for kid in children(pid):
        with contextlib.suppress(OSError):
            total += rss_bytes(kid)
    return total


# ---------------------------------------------------------------------------- start/stop


def free_port(host: str = "127.0.0.1") -> int:
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port != 1883:
            return port


def wait_listening(run: Running, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run.alive():
            raise BrokerError(f"{run.name} exited at start:\n{run.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((run.host, run.port), 0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"{run.name} not listening on {run.port} after {timeout:.0f} s")


def gateway_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def is_gateway(name: str) -> bool:
    return name in GATEWAYS


def _gateway_cmd(
    work: Path,
    port: int,
    stomp_port: int = 0,
    durability: str | None = None,
    max_queued: int = MAX_QUEUED,
) -> tuple[list[str], dict[str, object]]:
    """``durability`` None keeps the gateway's default (sync). The data directory is
    ``work/data``: fresh for every run (``work`` is a new temporary directory)."""
    settings: dict[str, object] = {
        "log_level": "warning",
        "sys_interval": 0,
        "max_queued_messages": max_queued,
        "max_inflight": MAX_INFLIGHT,
        "durability": durability or "default (sync)",
        "data_dir": str(work / "data"),
    }
    mode = f'durability = "{durability}"\n' if durability else ""
    conf = work / "gateway.toml"
    conf.write_text(
        f"""[gateway]
data_dir = "{work / "data"}"
drain_timeout = 1.0
log_level = "warning"
log_format = "json"
sys_interval = 0
max_queued_messages = {max_queued}
{mode}
[[listeners]]
protocol = "mqtt"
bind = "127.0.0.1:{port}"
max_inflight = {MAX_INFLIGHT}

[[listeners]]
protocol = "stomp"
bind = "127.0.0.1:{stomp_port}"
heartbeat = 0
"""
    )
    cmd = [gateway_python(), "-m", "gateway", "run", "-c", str(conf)]
    cmd += ["--listen", f"mqtt=127.0.0.1:{port}", "--data-dir", str(work / "data")]
    cmd += ["--log-level", "warning"]
    return cmd, settings


def _mosquitto_dir(path: Path) -> None:
    """A directory Mosquitto can write: started as root, it runs as the user
    ``mosquitto`` (its default ``user``), so the directory is given to that user."""
    path.mkdir()
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError, OSError):
            import pwd

            entry = pwd.getpwnam("mosquitto")
            path.parent.chmod(0o711)  # mkdtemp's 0700 would keep it out
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _mosquitto_cmd(
    work: Path, port: int, persist: bool = False, max_queued: int = MAX_QUEUED
) -> tuple[list[str], dict[str, object]]:
    settings: dict[str, object] = {
        "persistence": "true" if persist else "false",
        "max_queued_messages": max_queued,
        "max_inflight_messages": MAX_INFLIGHT,
        "sys_interval": 0,
    }
    persistence = "persistence false"
    if persist:
        # autosave_interval: its default (1800 s; autosave_on_changes false), written out.
        _mosquitto_dir(work / "data")
        settings.update(persistence_location=f"{work / 'data'}/", autosave_interval=1800)
        persistence = (
            f"persistence true\npersistence_location {work / 'data'}/\nautosave_interval 1800"
        )
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"""listener {port} 127.0.0.1
allow_anonymous true
{persistence}
max_queued_messages {max_queued}
max_inflight_messages {MAX_INFLIGHT}
max_connections -1
sys_interval 0
log_dest stderr
log_type error
log_type warning
"""
    )
    if not Path(MOSQUITTO).exists():
        raise BrokerError(f"{MOSQUITTO} not found: apt-get install mosquitto (or `make bench`)")
    return [MOSQUITTO, "-c", str(conf)], settings


def amqtt_bin() -> Path:
    return AMQTT_VENV / "bin" / "amqtt"


def _amqtt_cmd(work: Path, port: int) -> tuple[list[str], dict[str, object]]:
    # amqtt 0.11+ format: listeners.default + plugins as a mapping; no $SYS plugin (like
    # sys_interval 0) and no packet/event logger plugins. Its queues have no limits.
    settings: dict[str, object] = {"plugins": "AnonymousAuthPlugin only", "sys": "off"}
    conf = work / "amqtt.yaml"
    conf.write_text(
        f"""---
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""
    )
    exe = amqtt_bin()
    if not exe.exists():
        raise BrokerError(
            f"{exe} not found: python3 -m venv {AMQTT_VENV} && "
            f"{AMQTT_VENV}/bin/pip install amqtt (or `make bench`)"
        )
    return [str(exe), "-c", str(conf)], settings


def coilmq_bin() -> Path:
    return COILMQ_VENV / "bin" / "coilmq"


def _coilmq_cmd(work: Path, port: int) -> tuple[list[str], dict[str, object]]:
    # coilmq's defaults (coilmq/config/defaults.cfg) written out: in-memory queue store,
    # its default schedulers, no authenticator. It has no queue or in-flight limits and no
    # $SYS; one thread per connection. Logging: INFO to stdout (the log file), which is
    # start-up lines and errors only (per-frame lines are DEBUG).
    settings: dict[str, object] = {
        "qstore.factory": "coilmq.store.memory.MemoryQueue",
        "auth": "none",
        "log": "INFO",
    }
    conf = work / "coilmq.cfg"
    conf.write_text(
        f"""[coilmq]
listen_addr = 127.0.0.1
listen_port = {port}
qstore.factory = coilmq.store.memory.MemoryQueue
scheduler.subscriber_priority_factory = coilmq.scheduler.FavorReliableSubscriberScheduler
scheduler.queue_priority_factory = coilmq.scheduler.RandomQueueScheduler
"""
    )
    exe = coilmq_bin()
    if not exe.exists():
        raise BrokerError(
            f"{exe} not found: python3 -m venv {COILMQ_VENV} && "
            f"{COILMQ_VENV}/bin/pip install '{COILMQ_REQ}' (or `make bench-deps`)"
        )
    return [str(exe), "-c", str(conf), "-b", "127.0.0.1", "-p", str(port)], settings


def ensure_profiler(kind: str) -> list[str]:
    """The command prefix that runs the gateway under a profiler, installing it if need be."""
    bindir = Path(gateway_python()).parent
    if kind == "py-spy":
        exe = bindir / "py-spy"
        if not exe.exists() and not shutil.which("py-spy"):
            print("installing py-spy into the gateway's venv", file=sys.stderr)
            subprocess.run(
                [gateway_python(), "-m", "pip", "install", "--quiet", "py-spy"], check=True
            )
        return [str(exe) if exe.exists() else "py-spy", "record", "--rate", "200"]
    if kind == "pyinstrument":
        probe = subprocess.run(
            [gateway_python(), "-c", "import pyinstrument"], stderr=subprocess.DEVNULL, check=False
        )
        if probe.returncode:
            print("installing pyinstrument into the gateway's venv", file=sys.stderr)
            subprocess.run(
                [gateway_python(), "-m", "pip", "install", "--quiet", "pyinstrument"], check=True
            )
        return [gateway_python(), "-m", "pyinstrument", "-r", "html"]
    raise BrokerError(f"unknown profiler {kind!r} (py-spy or pyinstrument)")


@contextlib.contextmanager
def started(
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    pid: int | None = None,
    profile: str | None = None,
    profile_out: Path | None = None,
    gateway_src: Path | None = None,
    max_queued: int = MAX_QUEUED,
) -> Iterator[Running]:
    """Start ``name`` fresh (or describe an external broker) and stop it afterwards."""
    if name == "external":
        if port is None:
            raise BrokerError("--system external needs --port (and --pid to measure it)")
        yield Running(name, host, port, pid, stomp_port=port)
        return
    if name == "rabbitmq-stomp":
        yield rabbitmq_stomp()
        return
    if name == "rabbitmq-mqtt":
        yield rabbitmq_mqtt()
        return
    if profile and not is_gateway(name):
        raise BrokerError("--profile is for the gateway only")
    builders: dict[str, Callable[[Path, int], tuple[list[str], dict[str, object]]]] = {
        "mosquitto": lambda w, p: _mosquitto_cmd(w, p, False, max_queued),
        "mosquitto-persist": lambda w, p: _mosquitto_cmd(w, p, True, max_queued),
        "amqtt": _amqtt_cmd,
        "coilmq": _coilmq_cmd,
    }
    if name not in builders and not is_gateway(name):
        raise BrokerError(f"unknown system {name!r}")
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    port = free_port()
    stomp_port = free_port() if is_gateway(name) else port if name == "coilmq" else None
    if is_gateway(name):
        cmd, settings = _gateway_cmd(work, port, stomp_port or 0, GATEWAYS[name], max_queued)
    else:
        cmd, settings = builders[name](work, port)
    out_file = None
    if profile:
        assert profile_out is not None
        prefix = ensure_profiler(profile)
        out_file = profile_out.with_suffix(".svg" if profile == "py-spy" else ".html")
        out_file.parent.mkdir(parents=True, exist_ok=True)
        if profile == "py-spy":
            cmd = [*prefix, "-o", str(out_file), "--", *cmd]
        else:
            cmd = [*prefix, "-o", str(out_file), *cmd[1:]]  # python -m pyinstrument ... -m gateway
    log = work / "broker.log"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            cmd,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work,
            env=_env(gateway_src) if is_gateway(name) else None,
        )
    run = Running(name, host, port, proc.pid, proc, work, log, out_file, settings, stomp_port)
    if name == "coilmq":
        run.stomp_host = socket.getfqdn()  # what its STOMP 1.2 CONNECT insists on
    try:
        wait_listening(run)
        if stomp_port and stomp_port != port:
            wait_listening(replace(run, port=stomp_port))
        if profile == "py-spy":  # measure the gateway, not the sampler
            kids = children(proc.pid)
            run.pid = kids[0] if kids else proc.pid
        yield run
    finally:
        stop(run)
        shutil.rmtree(work, ignore_errors=True)


def beam_pids() -> tuple[int, ...]:
    """The RabbitMQ node's ``beam.smp`` processes: ``pgrep -f beam.smp`` less any match that
    is not one (a shell or ``grep`` whose command line names it) or has gone meanwhile."""
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True, check=False)
    pids = []
    for p in map(int, out.stdout.split()):
        with contextlib.suppress(OSError):
            if p != os.getpid() and Path(f"/proc/{p}/comm").read_text().strip() == "beam.smp":
                pids.append(p)
    return tuple(pids)


def rabbitmq_stomp() -> Running:
    """RabbitMQ's STOMP plugin, already running: measured, never started or stopped. Its
    CPU and RSS are the sums over the node's beam.smp processes (and their children)."""
    pids = beam_pids()
    if not pids:
        raise BrokerError("no beam.smp process: RabbitMQ is not running")
    host, port = RABBITMQ_STOMP
    run = Running("rabbitmq-stomp", host, port, pids[0], stomp_port=port, extra_pids=pids[1:])
    wait_listening(run, timeout=5)
    return run


def rabbitmq_mqtt() -> Running:
    """RabbitMQ's MQTT plugin, already running on ``RABBITMQ_MQTT``: measured like
    :func:`rabbitmq_stomp`, never started or stopped."""
    pids = beam_pids()
    if not pids:
        raise BrokerError("no beam.smp process: RabbitMQ is not running")
    host, port = RABBITMQ_MQTT
    run = Running("rabbitmq-mqtt", host, port, pids[0], extra_pids=pids[1:])
    try:
        wait_listening(run, timeout=5)
    except BrokerError as exc:
        raise BrokerError(
            f"{exc}: enable RabbitMQ's MQTT plugin on {host}:{port} (docs/benchmarks.md)"
        ) from None
    return run


def stomp_server(host: str, port: int) -> str:
    """The ``server`` header of a STOMP CONNECTED frame (RabbitMQ's version)."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
            data = s.recv(4096).decode(errors="replace")
    except OSError as exc:
        return f"unavailable ({exc})"
    for line in data.splitlines():
        if line.startswith("server:"):
            return line[7:]
    return "unavailable"


def stop(run: Running, timeout: float = 20.0) -> None:
    proc = run.proc
    if proc is None or proc.poll() is not None:
        return
    target = run.pid if run.pid and run.pid != proc.pid else proc.pid
    gentle = run.name in ("amqtt", "coilmq") or is_gateway(run.name)
    sig = signal.SIGINT if gentle else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.kill(target, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------- versions


def _env(gateway_src: Path | None) -> dict[str, str] | None:
    """The environment that runs the gateway from a snapshot (None: the work tree)."""
    if gateway_src is None:
        return None
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(gateway_src), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }


def _first_line(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def gateway_revision() -> str:
    """The commit the gateway runs from, and whether gateway/ differs from it."""
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return commit + (" + uncommitted changes in gateway/" if dirty else "")


def snapshot_gateway(rev: str | None = None) -> tuple[Path, str]:
    """Copy gateway/ as it is now, so that every run of a comparison runs the same code
    even while the work tree moves on: (directory to put on PYTHONPATH, its revision).
    With ``rev``, gateway/ as committed in that git revision instead (``git archive``):
    figures of a commit, whatever others have left uncommitted in a shared work tree."""
    root = Path(tempfile.mkdtemp(prefix="bench-gateway-src-"))
    if rev is None:
        revision = gateway_revision()
        shutil.copytree(
            REPO / "gateway", root / "gateway", ignore=shutil.ignore_patterns("__pycache__")
        )
        return root, revision
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode:
        shutil.rmtree(root, ignore_errors=True)
        raise BrokerError(f"--gateway-rev {rev!r}: {commit.stderr.strip()}")
    archive = subprocess.run(
        [*git, "archive", commit.stdout.strip(), "gateway"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root, commit.stdout.strip() + " (gateway/ as committed)"


def versions(
    snapshot: tuple[Path, str] | None = None, systems: tuple[str, ...] = ()
) -> dict[str, str]:
    src, revision = snapshot if snapshot else (None, gateway_revision())
    gw = _first_line([gateway_python(), "-m", "gateway", "version"], _env(src))
    extra = {}
    if "rabbitmq-stomp" in systems:
        extra["rabbitmq-stomp"] = stomp_server(*RABBITMQ_STOMP) + " (STOMP plugin, already running)"
    if "rabbitmq-mqtt" in systems:
        ver = _first_line(["rabbitmqctl", "version"])
        host, port = RABBITMQ_MQTT
        extra["rabbitmq-mqtt"] = f"RabbitMQ {ver} (MQTT plugin on {host}:{port}, already running)"
    if "coilmq" in systems:
        py = str(COILMQ_VENV / "bin" / "python")
        if coilmq_bin().exists():
            ver = "import importlib.metadata as m; print(m.version('coilmq'))"
            extra["coilmq"] = "coilmq " + _first_line([py, "-c", ver])
            extra["python (coilmq venv)"] = _first_line([py, "--version"])
        else:
            extra["coilmq"] = "missing"
    return {
        **extra,
        "gateway": f"{gw} (commit {revision})",
        "mosquitto": _first_line([MOSQUITTO, "-h"]) if Path(MOSQUITTO).exists() else "missing",
        "amqtt": "amqtt " + _first_line([str(amqtt_bin()), "--version"])
        if amqtt_bin().exists()
        else "missing",
        "python (gateway, load generator)": _first_line([gateway_python(), "--version"]),
        "python (amqtt venv)": _first_line([str(AMQTT_VENV / "bin" / "python"), "--version"])
        if amqtt_bin().exists()
        else "missing",
    }


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "kernel": os.uname().release,
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    }
