"""The users file: SCRAM credentials, groups, per-user limits, certificate names.

```toml
[users.alice]
groups = ["ops"]
scram_sha_256 = "SALT:ITERATIONS:STORED_KEY:SERVER_KEY"   # base64 parts
scram_sha_512 = "SALT:ITERATIONS:STORED_KEY:SERVER_KEY"
limits = { max_connections = 5, max_subscriptions = 100, publish_rate = 50 }
certificate = "alice.example.com"    # a client certificate's CN or SAN (EXTERNAL)

[certificates]                         # more certificate names, each to a user
"device-42.example.com" = "alice"
```

No password is stored, only SCRAM keys (RFC 5802): a PLAIN password is checked
by deriving the keys again with the stored salt and iteration count. The file
is small and read synchronously (at start, on ``reload_if_changed`` at most once
a second, by ``gateway passwd``); it is written atomically (temp file + rename),
so a reader sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
from scramp import utils as scramp_utils  # type: ignore[import-untyped]

from ..config import ConfigError
from ..logging import get_logger
from .identity import NO_LIMITS, Identity, Limits

# Mechanism name -> (users file key, hash name, digest size).
SCRAM_MECHANISMS: dict[str, tuple[str, str, int]] = {
    "SCRAM-SHA-256": ("scram_sha_256", "sha256", 32),
    "SCRAM-SHA-512": ("scram_sha_512", "sha512", 64),
}
DEFAULT_ITERATIONS = 4096  # RFC 7677's minimum, and what scramp and PostgreSQL use
MIN_ITERATIONS = 4096  # scramp refuses fewer
MAX_ITERATIONS = 10_000_000
MIN_SALT = 12  # bytes; scramp refuses shorter salts
MAX_FILE_SIZE = 16 * 1024 * 1024
MAX_NAME = 256
RELOAD_INTERVAL = 1.0  # seconds between two looks at the file

# Keys for decoy credentials of unknown users, so that SCRAM fails the same way
# (at the proof) whether or not the user exists. Fresh in every process.
_DECOY_KEY = secrets.token_bytes(32)


class UsersFileError(ConfigError):
    """The users file cannot be read or is wrong: names the file, the key, the problem."""


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep, as SCRAM clients apply it; ValueError if prohibited."""
    try:
        return str(scramp_utils.saslprep(text))
    except scramp_utils.ScramException as exc:
        raise ValueError(str(exc)) from None


def check_user_name(name: str) -> None:
    """ValueError unless ``name`` can be a user: 1-256 characters, no control
    characters, unchanged by SASLprep (so SCRAM and PLAIN see the same name)."""
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"must be 1 to {MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError("must not contain control characters")
    if saslprep(name) != name:
        raise ValueError("must be unchanged by SASLprep (RFC 4013): normalize it first")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScramCredential:
    """What a server keeps for one SCRAM mechanism (RFC 5802 section 3)."""

    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, mechanism: str, text: str) -> ScramCredential:
        """Read ``salt:iterations:stored_key:server_key``; ValueError if wrong."""
        size = SCRAM_MECHANISMS[mechanism][2]
        parts = text.split(":")
        if len(parts) != 4:
            raise ValueError("expected SALT:ITERATIONS:STORED_KEY:SERVER_KEY")
        salt_text, iterations_text, stored_text, server_text = parts
        try:
            salt, stored_key, server_key = (
                _unb64(salt_text),
                _unb64(stored_text),
                _unb64(server_text),
            )
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ValueError("salt and keys must be base64") from None
        if not re.fullmatch(r"[1-9][0-9]{0,8}", iterations_text):
            raise ValueError("the iteration count must be a positive integer")
        iterations = int(iterations_text)
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}")
        if len(salt) < MIN_SALT:
            raise ValueError(f"the salt must be at least {MIN_SALT} bytes")
        if len(stored_key) != size or len(server_key) != size:
            raise ValueError(f"the keys must be {size} bytes for {mechanism}")
        return cls(
            mechanism=mechanism,
            salt=salt,
            iterations=iterations,
            stored_key=stored_key,
            server_key=server_key,
        )

    def format(self) -> str:
        return ":".join(
            (_b64(self.salt), str(self.iterations), _b64(self.stored_key), _b64(self.server_key))
        )

    @classmethod
    def derive(
        cls,
        mechanism: str,
        password: str,
        *,
        salt: bytes | None = None,
        iterations: int = DEFAULT_ITERATIONS,
    ) -> ScramCredential:
        """The credential for ``password`` (SASLprep applied, as SCRAM clients do)."""
        salt = secrets.token_bytes(16) if salt is None else salt
        stored_key, server_key = _keys(mechanism, saslprep(password).encode(), salt, iterations)
        return cls(
            mechanism=mechanism,
            salt=salt,
            iterations=iterations,
            stored_key=stored_key,
            server_key=server_key,
        )

    def matches(self, password: bytes) -> bool:
        """True if ``password`` (UTF-8, as PLAIN carries it) derives these keys;
        compared in constant time."""
        try:
            prepared = saslprep(password.decode("utf-8")).encode()
        except (UnicodeDecodeError, ValueError):
            prepared = b""  # cannot match: still spend the same time
            ok = False
        else:
            ok = True
        stored_key, server_key = _keys(self.mechanism, prepared, self.salt, self.iterations)
        same_stored = hmac.compare_digest(stored_key, self.stored_key)
        same_server = hmac.compare_digest(server_key, self.server_key)
        return ok and same_stored and same_server


def _keys(mechanism: str, password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    name = SCRAM_MECHANISMS[mechanism][1]
    salted = hashlib.pbkdf2_hmac(name, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", name).digest()
    stored_key = hashlib.new(name, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", name).digest()
    return stored_key, server_key


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    name: str
    groups: tuple[str, ...] = ()
    credentials: Mapping[str, ScramCredential] = field(default_factory=dict)
    limits: Limits = NO_LIMITS
    certificate: str | None = None

    def identity(self, via: str) -> Identity:
        return Identity(user=self.name, groups=self.groups, via=via, limits=self.limits)


@dataclass(frozen=True, slots=True)
class Users:
    """One reading of the users file; replaced whole on reload, never changed."""

    records: Mapping[str, UserRecord] = field(default_factory=dict)
    certificates: Mapping[str, str] = field(default_factory=dict)  # the [certificates] table

    def get(self, name: str | None) -> UserRecord | None:
        return None if name is None else self.records.get(name)

    def certificate_user(self, names: Iterable[str]) -> UserRecord | None:
        """The user of the first certificate name (CN or SAN) that is mapped."""
        for name in names:
            user = self.certificates.get(name)
            if user is None:
                user = next((r.name for r in self.records.values() if r.certificate == name), None)
            if user is not None and user in self.records:
                return self.records[user]
        return None

    @property
    def has_certificates(self) -> bool:
        return bool(self.certificates) or any(r.certificate for r in self.records.values())

    def check_password(self, name: str, password: bytes) -> UserRecord | None:
        """The user if ``password`` is theirs. An unknown user, or one without a
        SCRAM credential, costs the same key derivation and returns None."""
        record = self.records.get(name)
        credential = None
        if record is not None:
            credential = next(
                (record.credentials[m] for m in SCRAM_MECHANISMS if m in record.credentials), None
            )
        if record is None or credential is None:
            self.scram_credential(name, "SCRAM-SHA-256").matches(password)
            return None
        return record if credential.matches(password) else None

    def scram_credential(self, name: str, mechanism: str) -> ScramCredential:
        """The stored credential, or a decoy that no proof matches (same salt and
        iteration count for the same unknown name, so probing learns nothing)."""
        record = self.records.get(name)
        if record is not None and mechanism in record.credentials:
            return record.credentials[mechanism]
        size = SCRAM_MECHANISMS[mechanism][2]
        seed = hmac.new(_DECOY_KEY, f"{mechanism}\0{name}".encode(), "sha512").digest()
        counts = collections.Counter(
            r.credentials[mechanism].iterations
            for r in self.records.values()
            if mechanism in r.credentials
        )
        iterations = counts.most_common(1)[0][0] if counts else DEFAULT_ITERATIONS
        return ScramCredential(
            mechanism=mechanism,
            salt=seed[:16],
            iterations=iterations,
            stored_key=secrets.token_bytes(size),
            server_key=secrets.token_bytes(size),
        )


# ---- reading -------------------------------------------------------------------------


class _Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    groups: tuple[str, ...] = ()
    scram_sha_256: str | None = None
    scram_sha_512: str | None = None
    limits: Limits = NO_LIMITS
    certificate: str | None = None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(*parts: str) -> str:
    return ".".join(p if _BARE_KEY.fullmatch(p) else _toml_str(p) for p in parts)


def _explain(exc: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    match = re.fullmatch(r"(?s)(.*?)(?: - at `\$([^`]*)`)?", str(exc))
    assert match is not None
    msg, path = match.group(1), (match.group(2) or "").lstrip(".")
    key = f"{prefix}.{path}" if path else prefix
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", msg)
    if unknown:
        return f"{key}.{unknown.group(1)}", "unknown key"
    return key, msg[0].lower() + msg[1:]


def parse_users(text: str, source: str = "<users>") -> Users:
    """Decode a users file; UsersFileError names the key and the problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(source, "", f"invalid TOML: {exc}") from None
    for key in raw:
        if key not in ("users", "certificates"):
            raise UsersFileError(source, _key(key), "unknown key (expected users or certificates)")
    users_raw = raw.get("users", {})
    if not isinstance(users_raw, dict):
        raise UsersFileError(source, "users", "expected a table of users")
    records: dict[str, UserRecord] = {}
    for name, entry_raw in users_raw.items():
        records[name] = _record(source, name, entry_raw)
    certificates = _certificates(source, raw.get("certificates", {}), records)
    return Users(records=records, certificates=certificates)


def _record(source: str, name: str, entry_raw: Any) -> UserRecord:
    prefix = _key("users", name)
    try:
        check_user_name(name)
    except ValueError as exc:
        raise UsersFileError(source, prefix, f"bad user name: {exc}") from None
    try:
        entry = msgspec.convert(entry_raw, _Entry, strict=True)
    except msgspec.ValidationError as exc:
        raise UsersFileError(source, *_explain(exc, prefix)) from None
    credentials: dict[str, ScramCredential] = {}
    for mechanism, (field_name, _, _) in SCRAM_MECHANISMS.items():
        text = getattr(entry, field_name)
        if text is None:
            continue
        try:
            credentials[mechanism] = ScramCredential.parse(mechanism, text)
        except ValueError as exc:
            raise UsersFileError(source, f"{prefix}.{field_name}", str(exc)) from None
    for group in entry.groups:
        if not group:
            raise UsersFileError(source, f"{prefix}.groups", "a group name must not be empty")
    for limit in ("max_connections", "max_subscriptions", "publish_rate"):
        value = getattr(entry.limits, limit)
        if value is not None and value <= 0:
            raise UsersFileError(source, f"{prefix}.limits.{limit}", "must be more than 0")
    if entry.certificate == "":
        raise UsersFileError(source, f"{prefix}.certificate", "must not be empty")
    return UserRecord(
        name=name,
        groups=entry.groups,
        credentials=credentials,
        limits=entry.limits,
        certificate=entry.certificate,
    )


def _certificates(source: str, raw: Any, records: Mapping[str, UserRecord]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise UsersFileError(source, "certificates", "expected a table of NAME = USER")
    owners: dict[str, str] = {}
    for record in records.values():
        if record.certificate is None:
            continue
        if record.certificate in owners:
            raise UsersFileError(
                source,
                _key("users", record.name, "certificate"),
                f"{record.certificate!r} is also the certificate of {owners[record.certificate]!r}",
            )
        owners[record.certificate] = record.name
    for cert, user in raw.items():
        key = _key("certificates", cert)
        if not isinstance(user, str):
            raise UsersFileError(source, key, "expected a user name (a string)")
        if user not in records:
            raise UsersFileError(source, key, f"no user {user!r} in [users]")
        if not cert:
            raise UsersFileError(source, key, "the certificate name must not be empty")
        if cert in owners:
            raise UsersFileError(
                source, key, f"{cert!r} is already the certificate of {owners[cert]!r}"
            )
        owners[cert] = user
    return dict(raw)


def load_users(path: str | os.PathLike[str]) -> Users:
    return parse_users(_read(Path(path)), str(path))


def _read(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise UsersFileError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_SIZE:
        raise UsersFileError(str(path), "", f"larger than {MAX_FILE_SIZE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsersFileError(str(path), "", "not UTF-8") from None


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class UserStore:
    """The users file, reloaded when it changes.

    ``reload_if_changed`` looks at the file's mtime, size and inode at most once
    every ``interval`` seconds of ``clock``, and reads it (synchronously: it is
    small) only when they changed. A file that has become unreadable or wrong is
    logged (``auth.users.reload_failed``) and the users read before stay in force.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = RELOAD_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._interval = interval
        self._signature = _signature(self.path)
        self.users = load_users(self.path)  # raises UsersFileError at start
        self._checked = clock()
        self._log = get_logger(users_file=str(self.path))

    def reload_if_changed(self) -> bool:
        """Read the file again if it changed; True when new users are in force."""
        now = self._clock()
        if now - self._checked < self._interval:
            return False
        self._checked = now
        signature = _signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            self.users = load_users(self.path)
        except UsersFileError as exc:
            self._log.error("auth.users.reload_failed", error=str(exc))
            return False
        self._log.info("auth.users.reloaded", users=len(self.users.records))
        return True


# ---- writing (gateway passwd) --------------------------------------------------------


def with_password(
    users: Users,
    name: str,
    password: str,
    *,
    groups: tuple[str, ...] | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> Users:
    """``users`` with ``name`` added or its password changed (both SCRAM
    credentials); ``groups`` replaces the user's groups unless None."""
    check_user_name(name)
    if not password:
        raise ValueError("the password must not be empty")
    credentials = {
        mechanism: ScramCredential.derive(mechanism, password, iterations=iterations)
        for mechanism in SCRAM_MECHANISMS
    }
    record = users.records.get(name) or UserRecord(name=name)
    record = replace(
        record,
        credentials=credentials,
        groups=record.groups if groups is None else groups,
    )
    return Users(records={**users.records, name: record}, certificates=users.certificates)


def without_user(users: Users, name: str) -> Users:
    """``users`` less ``name`` and the certificate names mapped to it; KeyError if absent."""
    records = dict(users.records)
    del records[name]
    certificates = {cert: user for cert, user in users.certificates.items() if user != name}
    return Users(records=records, certificates=certificates)


HEADER = (
    "# Users of the gateway (docs/security.md). Written by `gateway passwd`;\n"
    "# passwords are kept only as SCRAM keys: salt:iterations:stored_key:server_key.\n"
)


def _toml_str(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def format_users(users: Users, header: str = HEADER) -> str:
    lines = [header.rstrip("\n")] if header else []
    for record in users.records.values():
        lines += ["", f"[{_key('users', record.name)}]"]
        lines.append(f"groups = [{', '.join(_toml_str(g) for g in record.groups)}]")
        for mechanism, (field_name, _, _) in SCRAM_MECHANISMS.items():
            if mechanism in record.credentials:
                credential = record.credentials[mechanism].format()
                lines.append(f"{field_name} = {_toml_str(credential)}")
        limits = [
            f"{name} = {value!r}"
            for name, value in msgspec.structs.asdict(record.limits).items()
            if value is not None
        ]
        if limits:
            lines.append(f"limits = {{ {', '.join(limits)} }}")
        if record.certificate is not None:
            lines.append(f"certificate = {_toml_str(record.certificate)}")
    if users.certificates:
        lines += ["", "[certificates]"]
        lines += [f"{_toml_str(c)} = {_toml_str(u)}" for c, u in users.certificates.items()]
    return "\n".join(lines) + "\n"


def leading_comments(text: str) -> str:
    """The comment lines a file starts with, kept when ``gateway passwd`` rewrites it."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def save_users(path: str | os.PathLike[str], users: Users, header: str = HEADER) -> None:
    """Write the file atomically: a temporary file beside it, fsync, rename.
    A new file is readable by its owner only (it holds password verifiers); an
    existing file keeps its mode."""
    path = Path(path)
    text = format_users(users, header)
    parse_users(text, str(path))  # never write what could not be read back
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
