"""`gateway passwd` as an operator runs it: a real subprocess, the password on standard
input (or typed at a terminal, never echoed), the users file rewritten atomically."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.auth.users import load_users
from tests.conftest import NET_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]


def passwd(*args: str, stdin: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, "passwd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=NET_TIMEOUT,
        check=False,
    )


@pytest.mark.slow
def test_add_change_and_delete_users(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    groups = ("--group", "ops", "--group", "dev")
    added = passwd("-f", str(path), "alice", *groups, stdin="Tr0ub4dor\n")
    assert added.returncode == 0, added.stderr
    assert "added user 'alice'" in added.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = load_users(path)
    alice = users.get("alice")
    assert alice is not None
    assert alice.groups == ("ops", "dev")
    assert users.check_password("alice", b"Tr0ub4dor") is alice

    changed = passwd("-f", str(path), "alice", stdin="correct horse\n")
    assert changed.returncode == 0, changed.stderr
    assert "changed the password of user 'alice'" in changed.stdout
    users = load_users(path)
    assert users.check_password("alice", b"correct horse") is not None
    assert users.check_password("alice", b"Tr0ub4dor") is None
    assert users.records["alice"].groups == ("ops", "dev")  # kept without --group

    assert passwd("-f", str(path), "bob", stdin="pw-bob\n").returncode == 0
    deleted = passwd("-f", str(path), "alice", "--delete")
    assert deleted.returncode == 0, deleted.stderr
    assert set(load_users(path).records) == {"bob"}
    for result in (added, changed, deleted):
        for secret in ("Tr0ub4dor", "correct horse"):
            assert secret not in result.stdout + result.stderr
    text = path.read_text()
    assert "pw-bob" not in text
    assert "correct horse" not in text
    assert sorted(os.listdir(tmp_path)) == ["users.toml"]  # no temporary file left


@pytest.mark.slow
def test_refusals_and_their_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    empty = passwd("-f", str(path), "alice", stdin="\n")
    assert empty.returncode == 1
    assert "the password must not be empty" in empty.stderr
    assert not path.exists()
    missing = passwd("-f", str(path), "nobody", "--delete")
    assert missing.returncode == 1
    assert "no user 'nobody'" in missing.stderr
    bad_name = passwd("-f", str(path), "a\tb", stdin="pw\n")
    assert bad_name.returncode == 1
    assert "control characters" in bad_name.stderr
    path.write_text("[users.x]\nbogus = 1\n")
    broken = passwd("-f", str(path), "alice", stdin="pw\n")
    assert broken.returncode == 2
    assert "users.x.bogus: unknown key" in broken.stderr
    assert path.read_text() == "[users.x]\nbogus = 1\n"  # left alone
    nowhere = passwd("alice", "-c", str(tmp_path / "none.toml"), stdin="pw\n")
    assert nowhere.returncode == 2
    assert "give -f USERS_FILE or set auth.users_file" in nowhere.stderr


@pytest.mark.slow
def test_the_users_file_of_the_configuration_is_used(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    users = tmp_path / "users.toml"
    config.write_text(f'[auth]\nusers_file = "{users}"\n')
    first = passwd("-c", str(config), "alice", stdin="pw-1\n")
    assert first.returncode == 0, first.stderr
    assert load_users(users).check_password("alice", b"pw-1") is not None
    check = subprocess.run(
        [*GATEWAY, "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=NET_TIMEOUT,
        check=False,
        cwd=ROOT,
    )
    assert check.returncode == 0, check.stderr


def _converse(fd: int, answers: list[bytes], deadline: float) -> bytes:
    """Answer each password prompt on the terminal in turn; all that was shown."""
    shown = b""
    pending = list(answers)
    answered = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        # Answer a prompt once it is whole ("...: "), and each prompt only once.
        if pending and shown.endswith(b": ") and shown.count(b"assword") > answered:
            answered += 1
            os.write(fd, pending.pop(0))
    return shown


# The child opens the terminal by name as a session leader, making it its controlling
# terminal (getpass reads /dev/tty), then runs the gateway command.
_ON_A_TERMINAL = (
    "import os, runpy, sys; os.close(os.open(os.ttyname(0), os.O_RDWR)); "
    "sys.argv = ['gateway', *sys.argv[1:]]; runpy.run_module('gateway', run_name='__main__')"
)


def _run_on_a_terminal(args: list[str], answers: list[bytes]) -> tuple[int, bytes]:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", _ON_A_TERMINAL, "passwd", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        shown = _converse(controller, answers, time.monotonic() + NET_TIMEOUT)
        code = process.wait(timeout=NET_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return code, shown


@pytest.mark.slow
def test_on_a_terminal_the_password_is_asked_twice_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    code, shown = _run_on_a_terminal(["-f", str(path), "alice"], [b"s3cr3t-typed\n"] * 2)
    assert code == 0, shown
    assert shown.count(b"assword") == 2
    assert b"s3cr3t-typed" not in shown
    assert load_users(path).check_password("alice", b"s3cr3t-typed") is not None

    code, shown = _run_on_a_terminal(["-f", str(path), "alice"], [b"one\n", b"two\n"])
    assert code == 1
    assert b"the passwords differ" in shown
    assert load_users(path).check_password("alice", b"s3cr3t-typed") is not None
