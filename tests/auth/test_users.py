"""The users file: parsing, errors, SCRAM credentials, PLAIN checks, reload, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import scramp  # type: ignore[import-untyped]
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.auth.identity import Limits
from gateway.auth.users import (
    DEFAULT_ITERATIONS,
    ScramCredential,
    Users,
    UsersFileError,
    UserStore,
    format_users,
    leading_comments,
    load_users,
    parse_users,
    save_users,
    with_password,
    without_user,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "users.toml.example"
# A fixed salt keeps the credentials below stable across runs.
SALT = b"0123456789abcdef"


def credential(mechanism: str, password: str) -> str:
    return ScramCredential.derive(mechanism, password, salt=SALT).format()


GOOD = f"""
[users.alice]
groups = ["ops", "admins"]
scram_sha_256 = "{credential("SCRAM-SHA-256", "pw-alice")}"
scram_sha_512 = "{credential("SCRAM-SHA-512", "pw-alice")}"
limits = {{ max_connections = 5, max_subscriptions = 10, publish_rate = 2 }}
certificate = "alice.example.com"

[users."bob the builder"]
scram_sha_512 = "{credential("SCRAM-SHA-512", "pw-bob")}"

[users.device]

[certificates]
"device.example.com" = "device"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_users_file_parses() -> None:
    users = parse_users(GOOD, "users.toml")
    alice = users.get("alice")
    assert alice is not None
    assert alice.groups == ("ops", "admins")
    assert set(alice.credentials) == {"SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert alice.limits == Limits(max_connections=5, max_subscriptions=10, publish_rate=2.0)
    bob = users.get("bob the builder")
    assert bob is not None
    assert set(bob.credentials) == {"SCRAM-SHA-512"}
    assert bob.limits == Limits()
    assert users.certificate_user(["nope", "alice.example.com"]) is alice
    assert users.certificate_user(["device.example.com"]) is users.get("device")
    assert users.certificate_user(["unknown"]) is None
    identity = alice.identity("PLAIN")
    assert (identity.user, identity.groups, identity.via) == ("alice", ("ops", "admins"), "PLAIN")
    assert identity.limits.max_connections == 5


def test_the_shipped_example_parses_and_its_password_works() -> None:
    users = load_users(EXAMPLE)
    assert users.check_password("alice", b"change-me") is users.get("alice")
    assert users.certificate_user(["device-42-backup.example.com"]) is users.get("device-42")


def s256(text: str) -> str:
    return f'[users.u]\nscram_sha_256 = "{text}"\n'


GOOD_256 = credential("SCRAM-SHA-256", "x")
SALT_B64, _, STORED_B64, SERVER_B64 = GOOD_256.split(":")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[users.u\n", "", "invalid TOML"),
        ("[other]\n", "other", "unknown key"),
        ("users = 3\n", "users", "expected a table"),
        ("[users.u]\npassword = 'x'\n", "users.u.password", "unknown key"),
        ("[users.u]\ngroups = 'ops'\n", "users.u.groups", "expected `array`"),
        ("[users.u]\ngroups = ['']\n", "users.u.groups", "must not be empty"),
        ("[users.u]\nlimits = { bogus = 1 }\n", "users.u.limits.bogus", "unknown key"),
        ("[users.u]\nlimits = { max_connections = 0 }\n", "users.u.limits.max_connections", "> 0"),
        ("[users.u]\ncertificate = ''\n", "users.u.certificate", "must not be empty"),
        ('[users."a\\u0001b"]\n', 'users."a\\u0001b"', "control characters"),
        (s256("abc"), "users.u.scram_sha_256", "SALT:ITERATIONS"),
        (s256(f"!!!:4096:{STORED_B64}:{SERVER_B64}"), "users.u.scram_sha_256", "base64"),
        (s256(f"{SALT_B64}:4095:{STORED_B64}:{SERVER_B64}"), "users.u.scram_sha_256", "between"),
        (s256(f"{SALT_B64}:04096:{STORED_B64}:{SERVER_B64}"), "users.u.scram_sha_256", "positive"),
        (s256(f"c2FsdA==:4096:{STORED_B64}:{SERVER_B64}"), "users.u.scram_sha_256", "salt"),
        (s256(f"{SALT_B64}:4096:{SALT_B64}:{SERVER_B64}"), "users.u.scram_sha_256", "32 bytes"),
        ("[users.u]\n[certificates]\nx = 'v'\n", "certificates.x", "no user 'v'"),
        ("[users.u]\n[certificates]\nx = 1\n", "certificates.x", "expected a user name"),
        (
            "[users.u]\ncertificate = 'c'\n[users.v]\ncertificate = 'c'\n",
            "users.v.certificate",
            "also the certificate of 'u'",
        ),
        (
            "[users.u]\ncertificate = 'c'\n[certificates]\nc = 'u'\n",
            "certificates.c",
            "already the certificate",
        ),
    ],
)
def test_users_file_errors_name_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(UsersFileError) as info:
        parse_users(text, "users.toml")
    assert info.value.source == "users.toml"
    assert info.value.key == key
    assert problem.replace("> 0", "more than 0") in info.value.problem


def test_credentials_are_the_keys_scramp_derives() -> None:
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        ours = ScramCredential.derive(mechanism, "pässword", salt=SALT, iterations=5000)
        salt, stored, server, iterations = scramp.ScramMechanism(mechanism).make_auth_info(
            "pässword", iteration_count=5000, salt=SALT
        )
        assert (ours.salt, ours.stored_key, ours.server_key, ours.iterations) == (
            salt,
            stored,
            server,
            iterations,
        )
        assert ScramCredential.parse(mechanism, ours.format()) == ours


def test_plain_passwords_are_checked_against_the_scram_keys() -> None:
    users = parse_users(GOOD)
    assert users.check_password("alice", b"pw-alice") is users.get("alice")
    assert users.check_password("bob the builder", b"pw-bob") is users.get("bob the builder")
    assert users.check_password("alice", b"pw-bob") is None
    assert users.check_password("nobody", b"pw-alice") is None
    assert users.check_password("device", b"") is None  # no credential: certificate only
    assert users.check_password("alice", b"\xff\xfe") is None  # not UTF-8


def test_decoy_credentials_are_stable_per_name_and_never_stored_ones() -> None:
    users = parse_users(GOOD)
    first = users.scram_credential("nobody", "SCRAM-SHA-256")
    again = users.scram_credential("nobody", "SCRAM-SHA-256")
    assert (first.salt, first.iterations) == (again.salt, again.iterations)
    assert first.iterations == DEFAULT_ITERATIONS
    assert users.scram_credential("other", "SCRAM-SHA-256").salt != first.salt
    alice = users.get("alice")
    assert alice is not None
    assert users.scram_credential("alice", "SCRAM-SHA-256") is alice.credentials["SCRAM-SHA-256"]


def test_with_password_and_without_user_round_trip() -> None:
    users = parse_users(GOOD)
    users = with_password(users, "carol", "pw-carol", groups=("g",))
    users = with_password(users, "alice", "new-alice")  # groups kept
    text = format_users(users)
    again = parse_users(text)
    assert again.check_password("carol", b"pw-carol") is not None
    assert again.check_password("alice", b"new-alice") is not None
    assert again.check_password("alice", b"pw-alice") is None
    alice = again.get("alice")
    assert alice is not None
    assert alice.groups == ("ops", "admins")
    assert alice.limits.max_connections == 5
    assert alice.certificate == "alice.example.com"
    assert again.get("bob the builder") is not None
    assert "pw-carol" not in text
    gone = without_user(again, "device")
    assert gone.get("device") is None
    assert gone.certificates == {}
    with pytest.raises(ValueError, match="empty"):
        with_password(users, "dave", "")
    with pytest.raises(ValueError, match="SASLprep"):
        with_password(users, "\u2168", "pw")  # ROMAN NUMERAL NINE: NFKC makes it "IX"


def test_save_is_atomic_private_and_keeps_an_existing_mode(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    save_users(path, with_password(Users(), "u", "pw"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["users.toml"]
    path.chmod(0o640)
    save_users(path, with_password(load_users(path), "v", "pw"), "# mine\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["users.toml"]
    assert leading_comments(path.read_text()) == "# mine\n"
    assert set(load_users(path).records) == {"u", "v"}


def test_reload_happens_on_change_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    save_users(path, with_password(Users(), "u", "pw"))
    clock = Clock()
    store = UserStore(path, clock=clock)
    assert set(store.users.records) == {"u"}
    clock.now += 5
    assert not store.reload_if_changed()  # unchanged: not read again
    save_users(path, with_password(store.users, "v", "pw"))
    clock.now += 0.5
    assert not store.reload_if_changed()  # too soon after the last look
    clock.now += 0.6
    with capture_logs() as logs:
        assert store.reload_if_changed()
    assert set(store.users.records) == {"u", "v"}
    assert [e["event"] for e in logs] == ["auth.users.reloaded"]


def test_a_broken_file_keeps_the_users_in_force(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    save_users(path, with_password(Users(), "u", "pw"))
    clock = Clock()
    store = UserStore(path, clock=clock)
    path.write_text("[users.u]\nbogus = 1\n")
    clock.now += 2
    with capture_logs() as logs:
        assert not store.reload_if_changed()
    assert store.users.check_password("u", b"pw") is not None
    assert logs[0]["event"] == "auth.users.reload_failed"
    assert "users.u.bogus: unknown key" in logs[0]["error"]
    path.unlink()
    clock.now += 2
    assert not store.reload_if_changed()
    assert store.users.get("u") is not None


def test_a_missing_users_file_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read"):
        UserStore(tmp_path / "nope.toml")


# ---- the [auth] section --------------------------------------------------------------


def test_auth_defaults_allow_anonymous_on_loopback_only() -> None:
    loaded = config_mod.loads("")
    assert loaded.auth.anonymous == "loopback"
    assert loaded.auth.users_file is None
    assert not loaded.auth.jwt.enabled
    assert config_mod.default().auth == loaded.auth


def test_auth_users_file_is_read_when_the_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    save_users(path, with_password(Users(), "u", "pw"))
    loaded = config_mod.loads(f"[auth]\nusers_file = '{path}'\nanonymous = 'deny'\n")
    assert loaded.auth.users_file == str(path)
    path.write_text("[users.u]\nlimits = { publish_rate = -1 }\n")
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(f"[auth]\nusers_file = '{path}'\n")
    assert (info.value.source, info.value.key) == (str(path), "users.u.limits.publish_rate")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[auth]\nbogus = 1\n", "auth.bogus", "unknown key"),
        ("[auth]\nanonymous = 'sometimes'\n", "auth.anonymous", "invalid enum value"),
        ("[auth]\nanonymous = 'deny'\n", "auth.anonymous", "lets no client in"),
        ("[auth]\nusers_file = ''\n", "auth.users_file", "must not be empty"),
        ("[auth]\nusers_file = '/nonexistent/users.toml'\n", "", "cannot read"),
    ],
)
def test_auth_section_errors(text: str, key: str, problem: str) -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(text, "gw.toml")
    assert info.value.key == key
    assert problem in info.value.problem
