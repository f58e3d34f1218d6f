"""Webhook verification without I/O: signatures, timestamps, idempotency, configuration.

The HTTP endpoint that uses it is tested end to end in tests/e2e/test_http_webhooks.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.listeners import http_api
from gateway.listeners import webhooks as webhooks_module
from gateway.listeners.openapi import openapi_document
from gateway.listeners.webhooks import (
    MAX_IDEMPOTENCY_KEY,
    Deduplicator,
    HMACVerifier,
    NoVerifier,
    SignatureFormat,
    SignedPayload,
    StripeVerifier,
    Webhook,
    WebhookError,
    build_webhook,
    build_webhooks,
    github_signature,
    stripe_signature,
)
from tests.test_layering import _imports

SECRET = b"It's a Secret to Everybody"
BODY = b'{"action": "opened", "number": 1}'
NOW = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refusal(exc: pytest.ExceptionInfo[WebhookError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


def github() -> HMACVerifier:
    return HMACVerifier(
        SECRET, header="X-Hub-Signature-256", signature_format=SignatureFormat.parse("sha256={hex}")
    )


# -- GitHub: X-Hub-Signature-256: sha256=HEX of the body --------------------------------------


def test_github_signature_is_hmac_sha256_of_the_body() -> None:
    # GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
    assert github_signature(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_github_good_signature_is_accepted() -> None:
    headers = {"x-hub-signature-256": github_signature(SECRET, BODY)}
    github().verify(headers, BODY, NOW)


def test_github_signature_in_upper_case_hex_is_accepted() -> None:
    value = github_signature(SECRET, BODY)
    github().verify({"x-hub-signature-256": "sha256=" + value[7:].upper()}, BODY, NOW)


@pytest.mark.parametrize(
    "value",
    [
        None,  # missing
        "",
        "sha256=",
        "sha1=" + hashlib.sha1(BODY).hexdigest(),
        "sha256=nothex",
        github_signature(b"another secret", BODY),
        github_signature(SECRET, BODY + b" "),
        github_signature(SECRET, BODY)[7:],  # no "sha256=" prefix
    ],
    ids=["missing", "empty", "no-digest", "sha1", "not-hex", "wrong-secret", "other-body", "bare"],
)
def test_github_bad_or_missing_signature_is_401(value: str | None) -> None:
    headers = {} if value is None else {"x-hub-signature-256": value}
    with pytest.raises(WebhookError) as info:
        github().verify(headers, BODY, NOW)
    assert refusal(info) == (401, "bad_signature")
    # Neither the secret nor any signature is ever part of the answer.
    assert SECRET.decode() not in info.value.message
    assert github_signature(SECRET, BODY)[7:] not in info.value.message
    if value:
        assert value not in info.value.message


# -- Stripe: Stripe-Signature: t=T,v1=HEX over f"{t}.{body}" -------------------------------


def test_stripe_signature_is_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert stripe_signature(SECRET, BODY, 1_700_000_000) == f"t=1700000000,v1={expected}"


def test_stripe_good_signature_within_tolerance_is_accepted() -> None:
    verifier = StripeVerifier(SECRET, tolerance=300)
    for age in (0, 299, -299):
        header = stripe_signature(SECRET, BODY, int(NOW) - age)
        verifier.verify({"stripe-signature": header}, BODY, NOW)


def test_stripe_any_v1_may_match_during_secret_rotation() -> None:
    good = stripe_signature(SECRET, BODY, int(NOW))
    old = stripe_signature(b"old secret", BODY, int(NOW)).split(",")[1]
    header = f"{good.split(',')[0]},{old},v0=ignored,{good.split(',')[1]}"
    StripeVerifier(SECRET).verify({"stripe-signature": header}, BODY, NOW)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "garbage",
        f"v1={'0' * 64}",  # no timestamp
        f"t={int(NOW)}",  # no v1
        f"t=soon,v1={'0' * 64}",
        f"t={int(NOW)},v1=nothex",
        stripe_signature(b"another secret", BODY, int(NOW)),
        stripe_signature(SECRET, BODY, int(NOW)).replace(f"t={int(NOW)}", f"t={int(NOW) + 1}"),
    ],
    ids=["missing", "garbage", "no-t", "no-v1", "bad-t", "bad-hex", "wrong-secret", "moved-t"],
)
def test_stripe_bad_or_missing_signature_is_401(header: str | None) -> None:
    headers = {} if header is None else {"stripe-signature": header}
    with pytest.raises(WebhookError) as info:
        StripeVerifier(SECRET).verify(headers, BODY, NOW)
    assert refusal(info) == (401, "bad_signature")
    assert SECRET.decode() not in info.value.message


@pytest.mark.parametrize(("age", "word"), [(301, "old"), (-301, "future"), (86400, "old")])
def test_stripe_stale_or_future_timestamp_is_401_stale_timestamp(age: int, word: str) -> None:
    header = stripe_signature(SECRET, BODY, int(NOW) - age)
    with pytest.raises(WebhookError) as info:
        StripeVerifier(SECRET, tolerance=300).verify({"stripe-signature": header}, BODY, NOW)
    assert refusal(info) == (401, "stale_timestamp")
    assert word in info.value.message


def test_a_stale_forgery_is_a_bad_signature_not_a_stale_timestamp() -> None:
    """The signature is checked first: an unauthenticated caller learns nothing more."""
    header = stripe_signature(b"forged", BODY, int(NOW) - 3600)
    with pytest.raises(WebhookError) as info:
        StripeVerifier(SECRET).verify({"stripe-signature": header}, BODY, NOW)
    assert refusal(info) == (401, "bad_signature")


# -- custom schemes ---------------------------------------------------------------------------


def slack_like(tolerance: float = 300) -> HMACVerifier:
    return HMACVerifier(
        SECRET,
        header="X-Slack-Signature",
        signature_format=SignatureFormat.parse("v0={hex}"),
        signed_payload=SignedPayload("v0:{timestamp}:{body}"),
        timestamp_header="X-Slack-Request-Timestamp",
        tolerance=tolerance,
    )


def slack_headers(stamp: int, body: bytes = BODY) -> dict[str, str]:
    digest = hmac.new(SECRET, f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"x-slack-signature": f"v0={digest}", "x-slack-request-timestamp": str(stamp)}


def test_custom_timestamped_scheme() -> None:
    slack_like().verify(slack_headers(int(NOW) - 10), BODY, NOW)
    with pytest.raises(WebhookError) as info:
        slack_like().verify(slack_headers(int(NOW) - 600), BODY, NOW)
    assert refusal(info) == (401, "stale_timestamp")
    with pytest.raises(WebhookError) as info:
        slack_like().verify(slack_headers(int(NOW) + 600), BODY, NOW)
    assert refusal(info) == (401, "stale_timestamp")


def test_custom_timestamp_is_signed_and_required() -> None:
    headers = slack_headers(int(NOW) - 600)
    headers["x-slack-request-timestamp"] = str(int(NOW))  # a replay with a fresh timestamp
    with pytest.raises(WebhookError) as info:
        slack_like().verify(headers, BODY, NOW)
    assert refusal(info) == (401, "bad_signature")
    del headers["x-slack-request-timestamp"]
    with pytest.raises(WebhookError) as info:
        slack_like().verify(headers, BODY, NOW)
    assert refusal(info) == (401, "bad_signature")
    assert "X-Slack-Request-Timestamp" in info.value.message


def test_custom_base64_format() -> None:
    verifier = HMACVerifier(
        SECRET, header="X-Signature", signature_format=SignatureFormat.parse("{base64}")
    )
    digest = hmac.new(SECRET, BODY, hashlib.sha256).digest()
    verifier.verify({"x-signature": base64.b64encode(digest).decode()}, BODY, NOW)
    with pytest.raises(WebhookError):
        verifier.verify({"x-signature": digest.hex()}, BODY, NOW)


@pytest.mark.parametrize("template", ["", "{hex}{hex}", "{hex}{base64}", "sha256="])
def test_signature_format_needs_one_placeholder(template: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SignatureFormat.parse(template)


def test_signature_format_round_trip() -> None:
    form = SignatureFormat.parse("sha256={hex};")
    digest = hashlib.sha256(b"x").digest()
    assert form.digest(form.format(digest)) == digest
    assert form.digest("sha256=" + digest.hex()) is None


def test_no_verifier_accepts_anything() -> None:
    NoVerifier().verify({}, b"anything", NOW)


# -- idempotency ------------------------------------------------------------------------------


def test_duplicate_within_the_window_and_not_after() -> None:
    clock = FakeClock()
    dedupe = Deduplicator(window=60, max_entries=10, clock=clock)
    assert dedupe.lookup("k") is None
    dedupe.remember("k", "m1")
    clock.now = 59.9
    assert dedupe.lookup("k") == "m1"
    clock.now = 60.0
    assert dedupe.lookup("k") is None
    assert len(dedupe) == 0


def test_keys_age_from_their_own_delivery() -> None:
    clock = FakeClock()
    dedupe = Deduplicator(window=10, max_entries=10, clock=clock)
    dedupe.remember("a", "m1")
    clock.now = 5
    dedupe.remember("b", "m2")
    clock.now = 12
    assert dedupe.lookup("a") is None
    assert dedupe.lookup("b") == "m2"


def test_memory_is_bounded_and_the_oldest_key_goes_first() -> None:
    clock = FakeClock()
    dedupe = Deduplicator(window=3600, max_entries=3, clock=clock)
    for i in range(5):
        clock.now = i
        dedupe.remember(f"k{i}", f"m{i}")
    assert len(dedupe) == 3
    assert dedupe.evicted == 2
    assert [dedupe.lookup(f"k{i}") for i in range(5)] == [None, None, "m2", "m3", "m4"]


def webhook(preset: str = "github", **keys: object) -> Webhook:
    hook = config_mod.WebhookConfig(
        name="gh",
        destination="hooks/gh",
        preset=preset,  # type: ignore[arg-type]
        secret=None if preset == "none" else SECRET.decode(),
        **keys,  # type: ignore[arg-type]
    )
    return build_webhook(hook, {}, clock=FakeClock(), wall_clock=FakeClock(NOW))


def test_webhook_check_returns_the_presets_idempotency_key() -> None:
    signed = {"x-hub-signature-256": github_signature(SECRET, BODY)}
    assert webhook().check({**signed, "x-github-delivery": "d-1"}, BODY) == "d-1"
    assert webhook().check({**signed, "idempotency-key": "d-1"}, BODY) is None
    assert webhook().check(signed, BODY) is None
    stripe = webhook("stripe")
    stamped = {"stripe-signature": stripe_signature(SECRET, BODY, int(NOW))}
    assert stripe.check({**stamped, "idempotency-key": " evt_1 "}, BODY) == "evt_1"
    open_hook = webhook("none", idempotency_header="X-Event-Id")
    assert open_hook.check({"x-event-id": "e"}, BODY) == "e"
    assert webhook("none", idempotency_header="").check({"idempotency-key": "e"}, BODY) is None


def test_webhook_check_refuses_an_overlong_idempotency_key() -> None:
    hook = webhook("none")
    assert hook.check({"idempotency-key": "k" * MAX_IDEMPOTENCY_KEY}, b"")
    with pytest.raises(WebhookError) as info:
        hook.check({"idempotency-key": "k" * (MAX_IDEMPOTENCY_KEY + 1)}, b"")
    assert refusal(info) == (400, "bad_header")


def test_webhook_check_verifies_before_reading_the_key() -> None:
    with pytest.raises(WebhookError) as info:
        webhook().check({"x-github-delivery": "d-1"}, BODY)
    assert refusal(info) == (401, "bad_signature")


def test_message_headers_gateway_names_win() -> None:
    hook = webhook(headers={"source": "github", "team": "infra"})
    given = [("team", "mine"), ("webhook", "spoofed"), ("idempotency-key", "x"), ("a", "1")]
    assert hook.message_headers(given, "d-1") == [
        ("a", "1"),
        ("source", "github"),
        ("team", "infra"),
        ("webhook", "gh"),
        ("idempotency-key", "d-1"),
    ]
    assert hook.message_headers([], None) == [
        ("source", "github"),
        ("team", "infra"),
        ("webhook", "gh"),
    ]


# -- configuration ----------------------------------------------------------------------------


def load(webhooks: str, extra: str = "") -> config_mod.Config:
    return config_mod.loads(extra + webhooks, "site.toml")


GOOD = """
[[webhooks]]
name = "github"
destination = "ci/github"
preset = "github"
secret = "s3cret"

[[webhooks]]
name = "stripe"
destination = "$queue/payments"
preset = "stripe"
secret_env = "TEST_STRIPE_SECRET"
tolerance = "2m"
dedupe_window = "1h"
dedupe_max = 500

[[webhooks]]
name = "slack"
destination = "chat/slack"
preset = "custom"
secret = "x"
signature_header = "X-Slack-Signature"
signature_format = "v0={hex}"
timestamp_header = "X-Slack-Request-Timestamp"
signed_payload = "v0:{timestamp}:{body}"
headers = { source = "slack" }

[[webhooks]]
name = "open"
destination = "hooks/open"
preset = "none"
idempotency_header = ""
"""


def test_webhooks_load_and_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STRIPE_SECRET", "whsec_abc")
    loaded = load(GOOD)
    assert [hook.name for hook in loaded.webhooks] == ["github", "stripe", "slack", "open"]
    stripe = loaded.webhooks[1]
    assert (stripe.tolerance_seconds, stripe.dedupe_window_seconds) == (120, 3600)
    assert loaded.webhooks[0].tolerance_seconds == 300
    assert loaded.webhooks[0].dedupe_window_seconds == 86400
    hooks = build_webhooks(loaded.webhooks)
    assert isinstance(hooks["stripe"].verifier, StripeVerifier)
    assert hooks["stripe"].dedupe.max_entries == 500
    assert hooks["github"].idempotency_header == "X-GitHub-Delivery"
    assert hooks["stripe"].idempotency_header == "Idempotency-Key"
    assert hooks["open"].idempotency_header is None
    assert hooks["slack"].headers == (("source", "slack"),)
    # The secret comes from the environment as it was when the webhooks were built.
    body = b"{}"
    hooks["stripe"].verifier.verify(
        {"stripe-signature": stripe_signature(b"whsec_abc", body, int(NOW))}, body, NOW + 1
    )


class Raw(str):
    """TOML written as it is (an inline table)."""


def one(**keys: object) -> str:
    """One [[webhooks]] table: a valid GitHub webhook changed by ``keys`` (None removes)."""
    base: dict[str, object] = {"name": "h", "destination": "t", "preset": "github", "secret": "s"}
    base.update(keys)
    lines = []
    for key, value in base.items():
        if value is None:
            continue
        if isinstance(value, str) and not isinstance(value, Raw):
            lines.append(f"{key} = {value!r}")
        else:
            lines.append(f"{key} = {value}")
    return "[[webhooks]]\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (one(bogus=1), "webhooks[0].bogus", "unknown key"),
        (one(preset=None), "webhooks[0].preset", "required key is missing"),
        (one(preset="gitlab"), "webhooks[0].preset", "invalid enum"),
        (one(name="a/b"), "webhooks[0].name", "letters, digits"),
        (one() + one(), "webhooks[1].name", "duplicate webhook"),
        (one(destination="a/+"), "webhooks[0].destination", "no wildcards"),
        (one(destination=""), "webhooks[0].destination", "no wildcards"),
        (one(destination="$SYS/x"), "webhooks[0].destination", "reserved"),
        (one(destination="$queue/$temp/x"), "webhooks[0].destination", "must not start"),
        (one(secret=None), "webhooks[0].secret", "exactly one of secret or secret_env"),
        (one(secret_env="X"), "webhooks[0].secret", "exactly one of secret or secret_env"),
        (one(secret=""), "webhooks[0].secret", "must not be empty"),
        (one(secret=None, secret_env="TEST_UNSET_VAR"), "webhooks[0].secret_env", "not set"),
        (one(preset="none"), "webhooks[0].secret", "verifies no signature"),
        (
            one(preset="none", secret=None, signature_header="X-S"),
            "webhooks[0].signature_header",
            "verifies no signature",
        ),
        (one(signature_header="X-S"), "webhooks[0].signature_header", "only with preset"),
        (one(preset="stripe", timestamp_header="T"), "webhooks[0].timestamp_header", "only with"),
        (one(preset="custom"), "webhooks[0].signature_header", "required with preset"),
        (
            one(preset="custom", signature_header="X S"),
            "webhooks[0].signature_header",
            "not an HTTP header name",
        ),
        (
            one(preset="custom", signature_header="X-S", signature_format="sha256="),
            "webhooks[0].signature_format",
            "exactly one",
        ),
        (
            one(preset="custom", signature_header="X-S", signed_payload="{timestamp}"),
            "webhooks[0].signed_payload",
            "{body} exactly once",
        ),
        (
            one(
                preset="custom",
                signature_header="X-S",
                timestamp_header="X-T",
                signed_payload="{body}",
            ),
            "webhooks[0].signed_payload",
            "unsigned timestamp",
        ),
        (
            one(preset="custom", signature_header="X-S", signed_payload="{timestamp}.{body}"),
            "webhooks[0].timestamp_header",
            "required by {timestamp}",
        ),
        (one(tolerance="soon"), "webhooks[0].tolerance", "expected a duration"),
        (one(dedupe_window=0), "webhooks[0].dedupe_window", "more than zero"),
        (one(dedupe_max=0), "webhooks[0].dedupe_max", "at least 1"),
        (one(idempotency_header="a b"), "webhooks[0].idempotency_header", "header name"),
        (one(headers=Raw("{ webhook = 'x' }")), "webhooks[0].headers", "set by the gateway"),
        (one(headers=Raw("{ 'a b' = 'x' }")), "webhooks[0].headers", "not a header name"),
    ],
)
def test_webhook_errors_name_the_key(
    monkeypatch: pytest.MonkeyPatch, text: str, key: str, problem: str
) -> None:
    monkeypatch.delenv("TEST_UNSET_VAR", raising=False)
    with pytest.raises(config_mod.ConfigError) as info:
        load(text)
    assert info.value.source == "site.toml"
    assert info.value.key == key
    assert problem in info.value.problem


def test_a_queue_destination_must_exist_when_queues_are_not_auto_created() -> None:
    no_auto = "[gateway]\nauto_create_queues = false\n"
    with pytest.raises(config_mod.ConfigError) as info:
        load(one(destination="$queue/jobs"), no_auto)
    assert info.value.key == "webhooks[0].destination"
    assert "not declared" in info.value.problem
    loaded = load(one(destination="$queue/jobs"), no_auto + "[[queues]]\nname = 'jobs'\n")
    assert loaded.webhooks[0].destination == "$queue/jobs"


def test_the_secret_never_appears_in_a_config_error() -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        load(one(secret="hunter2", secret_env="ALSO"))
    assert "hunter2" not in str(info.value)


# -- the route and its description ------------------------------------------------------------


def test_the_verifier_module_is_sans_io() -> None:
    path = Path(webhooks_module.__file__)
    imported = _imports(path)
    assert not [name for name in imported if name.split(".")[0] in ("trio", "h11", "socket")]
    assert not [name for name in imported if name.startswith("gateway.listeners.")]


def test_the_webhook_route_is_described() -> None:
    routes = {(route.method, route.pattern) for route in http_api.ROUTES}
    assert ("POST", "/hooks/{name}") in routes
    operation = openapi_document()["paths"]["/hooks/{name}"]["post"]
    assert set(operation["responses"]) == {"200", "202", "400", "401", "404", "413", "503"}
