"""ACL rules: who they apply to, %u and %c, patterns against names and filters, first
match wins, deny by default once a rule exists, token rules first; [[acl]] in the config."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.auth.acl import (
    Acl,
    AclError,
    AclRule,
    RuleAction,
    check_pattern,
    check_rule,
    covers,
    overlaps,
    token_rule,
)
from gateway.auth.identity import Identity


def ident(
    user: str | None, *groups: str, acl: tuple[dict[str, object], ...] | None = None
) -> Identity:
    return Identity(user=user, groups=groups, via="password", acl=acl)


def rule(
    action: RuleAction,
    pattern: str,
    allow: bool = True,
    *,
    user: str | None = None,
    group: str | None = None,
    anonymous: bool = False,
) -> AclRule:
    return AclRule(
        action=action, pattern=pattern, allow=allow, user=user, group=group, anonymous=anonymous
    )


def split(text: str) -> Sequence[str]:
    return text.split("/")


ALICE = ident("alice", "users")
BOB = ident("bob", "users")
ADMIN = ident("root", "admins")


# -- patterns against topic names and filters ------------------------------------------------

COVERS = [
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),  # '#' includes the parent level
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("#", "$SYS/broker/uptime", False),  # a first-level wildcard never matches '$'
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    # filters: the pattern must match every topic the filter matches
    ("sensors/alice/#", "sensors/alice/+", True),
    ("sensors/alice/#", "sensors/alice/#", True),
    ("sensors/alice/#", "sensors/#", False),
    ("sensors/alice/#", "sensors/+/temp", False),
    ("sensors/+/temp", "sensors/+/temp", True),
    ("sensors/+/temp", "sensors/+/#", False),
    ("a/+", "a/#", False),
    ("#", "#", True),
    ("#", "+/+", True),
    ("#", "$SYS/#", False),
    ("a/+/#", "a/#", False),  # a/# matches 'a', which a/+/# does not
    ("$queue/#", "$queue/jobs", True),
    ("#", "$queue/jobs", False),
    ("$queue/jobs.*", "$queue/jobs.eu", False),  # no globbing: only + and #
]


@pytest.mark.parametrize(("pattern", "destination", "expected"), COVERS)
def test_covers(pattern: str, destination: str, expected: bool) -> None:
    assert covers(split(pattern), split(destination)) is expected


OVERLAPS = [
    ("inbox/#", "#", True),
    ("inbox/#", "+/bob", True),
    ("inbox/#", "outbox/#", False),
    ("a/b/#", "a/+", True),  # both match a/b
    ("a/+/c", "a/b/+", True),
    ("a/+/c", "a/b/d", False),
    ("a", "a/#", True),
    ("a/b", "a", False),
    ("#", "$SYS/#", False),
    ("$SYS/broker/#", "$SYS/+/uptime", True),
]


@pytest.mark.parametrize(("pattern", "destination", "expected"), OVERLAPS)
def test_overlaps(pattern: str, destination: str, expected: bool) -> None:
    assert overlaps(split(pattern), split(destination)) is expected
    assert overlaps(split(destination), split(pattern)) is expected


# -- who a rule applies to ---------------------------------------------------------------------


def test_without_any_rule_everything_is_allowed() -> None:
    acl = Acl()
    for identity in (None, ALICE):
        assert acl.allows(identity, "publish", "a/b")
        assert acl.allows(identity, "subscribe", "#")
        assert acl.allows(identity, "subscribe", "$SYS/#")
        assert acl.allows(identity, "consume", "$queue/jobs")


def test_once_a_rule_exists_what_no_rule_allows_is_denied() -> None:
    acl = Acl([rule("publish", "a/#", user="alice")])
    assert acl.allows(ALICE, "publish", "a/b")
    assert not acl.allows(ALICE, "publish", "b")
    assert not acl.allows(ALICE, "subscribe", "a/b")  # another action
    assert not acl.allows(BOB, "publish", "a/b")  # another user
    assert not acl.allows(None, "publish", "a/b")  # anonymous


def test_group_rules_apply_to_members() -> None:
    acl = Acl([rule("all", "shared/#", group="users")])
    assert acl.allows(ALICE, "publish", "shared/x")
    assert acl.allows(BOB, "subscribe", "shared/+")
    assert not acl.allows(ADMIN, "publish", "shared/x")
    assert not acl.allows(None, "publish", "shared/x")


def test_anonymous_rules_apply_to_clients_without_a_user() -> None:
    acl = Acl([rule("subscribe", "public/#", anonymous=True)])
    assert acl.allows(None, "subscribe", "public/news")
    assert acl.allows(ident(None), "subscribe", "public/news")  # authenticated as anonymous
    assert not acl.allows(ALICE, "subscribe", "public/news")
    assert not acl.allows(None, "publish", "public/news")


def test_all_covers_every_action() -> None:
    acl = Acl([rule("all", "$queue/jobs", user="alice"), rule("all", "t/#", user="alice")])
    assert acl.allows(ALICE, "consume", "$queue/jobs")
    assert acl.allows(ALICE, "publish", "$queue/jobs")
    assert acl.allows(ALICE, "publish", "t/1")
    assert acl.allows(ALICE, "subscribe", "t/#")
    assert not acl.allows(ALICE, "consume", "$queue/other")


# -- first match wins --------------------------------------------------------------------------


def test_the_first_matching_rule_decides() -> None:
    deny_first = Acl(
        [rule("publish", "a/secret", False, group="users"), rule("publish", "a/#", group="users")]
    )
    assert not deny_first.allows(ALICE, "publish", "a/secret")
    assert deny_first.allows(ALICE, "publish", "a/other")
    allow_first = Acl(
        [rule("publish", "a/#", group="users"), rule("publish", "a/secret", False, group="users")]
    )
    assert allow_first.allows(ALICE, "publish", "a/secret")


def test_user_rules_and_group_rules_keep_their_order() -> None:
    acl = Acl(
        [
            rule("subscribe", "ops/#", False, user="alice"),
            rule("subscribe", "ops/#", group="users"),
        ]
    )
    assert not acl.allows(ALICE, "subscribe", "ops/x")
    assert acl.allows(BOB, "subscribe", "ops/x")


# -- %u and %c ---------------------------------------------------------------------------------


def test_percent_u_is_the_user_name() -> None:
    acl = Acl([rule("all", "users/%u/#", group="users")])
    assert acl.allows(ALICE, "publish", "users/alice/x")
    assert not acl.allows(ALICE, "publish", "users/bob/x")
    assert acl.allows(BOB, "subscribe", "users/bob/+")
    assert not acl.allows(BOB, "subscribe", "users/+/x")


def test_percent_c_is_the_client_id() -> None:
    acl = Acl(
        [
            rule("publish", "devices/%c/state", group="users"),
            rule("publish", "x-%c-%u", group="users"),
        ]
    )
    assert acl.allows(ALICE, "publish", "devices/dev-1/state", "dev-1")
    assert not acl.allows(ALICE, "publish", "devices/dev-2/state", "dev-1")
    assert acl.allows(ALICE, "publish", "x-dev-1-alice", "dev-1")  # inside a level too
    assert not acl.allows(ALICE, "publish", "devices//state", "")  # no client id: no match


@pytest.mark.parametrize("name", ["a/b", "+", "#", "$SYS", ""])
def test_a_name_that_is_not_one_plain_level_never_widens_access(name: str) -> None:
    strange = ident(name or None, "users")
    acl = Acl(
        [
            rule("publish", "home/%u/admin", False, group="users"),
            rule("publish", "home/%u/#", group="users"),
            rule("publish", "home/#", group="users"),
        ]
    )
    # The allowing %u rule does not apply; the denying one denies every user's admin.
    assert not acl.allows(strange, "publish", "home/x/admin")
    assert acl.allows(strange, "publish", "home/x/y")  # through home/#
    assert acl.allows(ALICE, "publish", "home/alice/y")


def test_anonymous_clients_match_no_percent_u_rule() -> None:
    acl = Acl([rule("subscribe", "users/%u/#", anonymous=True)])
    assert not acl.allows(None, "subscribe", "users/+/x")
    assert not acl.allows(None, "subscribe", "users/%u/x")


# -- wildcard filters --------------------------------------------------------------------------

INBOX = [
    rule("all", "inbox/%u/#", group="users"),
    rule("all", "inbox/#", False, group="users"),
    rule("all", "#", group="users"),
]


def test_a_filter_needs_a_rule_that_covers_all_of_it() -> None:
    acl = Acl([rule("subscribe", "sensors/%u/#", group="users")])
    assert acl.allows(ALICE, "subscribe", "sensors/alice/+")
    assert acl.allows(ALICE, "subscribe", "sensors/alice/#")
    assert not acl.allows(ALICE, "subscribe", "sensors/#")
    assert not acl.allows(ALICE, "subscribe", "sensors/+/temp")


def test_a_broad_filter_is_allowed_and_its_messages_checked_one_by_one() -> None:
    acl = Acl(INBOX)
    assert acl.allows(ALICE, "subscribe", "#")  # the deny only overlaps it: '#' covers
    assert acl.allows(ALICE, "subscribe", "inbox/alice/msg")
    assert not acl.allows(ALICE, "subscribe", "inbox/bob/msg")  # what delivery checks
    assert not acl.allows(ALICE, "subscribe", "inbox/+/msg")  # covered by the deny


def test_whole_refuses_a_filter_that_a_deny_touches() -> None:
    acl = Acl(INBOX)
    assert not acl.allows(ALICE, "subscribe", "#", whole=True)
    assert acl.allows(ALICE, "subscribe", "news/#", whole=True)
    assert acl.allows(ALICE, "subscribe", "inbox/alice/#", whole=True)
    # a shared subscription is checked whole, on its filter
    assert not acl.allows(ALICE, "subscribe", "$share/g/#")
    assert acl.allows(ALICE, "subscribe", "$share/g/news/#")
    assert not acl.allows(ALICE, "subscribe", "$share/g")


def test_sys_topics_need_a_rule_of_their_own() -> None:
    acl = Acl([rule("subscribe", "#", group="users"), rule("subscribe", "$SYS/#", user="root")])
    assert not acl.allows(ALICE, "subscribe", "$SYS/#")
    assert not acl.allows(ALICE, "subscribe", "$SYS/broker/uptime")
    assert acl.allows(ADMIN, "subscribe", "$SYS/broker/+")
    assert acl.allows(ADMIN, "subscribe", "$SYS/broker/uptime")


# -- token rules -------------------------------------------------------------------------------


def test_token_rules_come_first() -> None:
    acl = Acl([rule("publish", "#", group="users")])
    token = ident(
        "alice",
        "users",
        acl=(
            {"action": "publish", "pattern": "alerts/#", "allow": False},
            {"pattern": "ops/%u", "allow": True},  # action defaults to all
        ),
    )
    assert not acl.allows(token, "publish", "alerts/fire")
    assert acl.allows(token, "publish", "news")  # the configured rules still apply
    assert acl.allows(token, "subscribe", "ops/alice")


def test_token_rules_alone_make_denial_the_default() -> None:
    acl = Acl()
    token = ident("svc", acl=({"action": "publish", "pattern": "svc/#", "allow": True},))
    assert acl.allows(token, "publish", "svc/x")
    assert not acl.allows(token, "publish", "other")
    assert not acl.allows(ident("svc", acl=()), "publish", "other")  # a claim of no rules
    assert acl.allows(ident("svc"), "publish", "other")  # no claim at all


@pytest.mark.parametrize(
    "bad",
    [
        {"action": "publish", "pattern": "a/#"},
        {"action": "write", "pattern": "a/#", "allow": True},
        {"action": "publish", "pattern": "a/#/b", "allow": True},
        {"action": "publish", "pattern": 3, "allow": True},
    ],
)
def test_token_rules_that_cannot_be_read_grant_nothing(bad: dict[str, object]) -> None:
    acl = Acl([rule("all", "#", group="users")])
    token = ident("alice", "users", acl=(bad,))
    with capture_logs() as logs:
        assert not acl.allows(token, "publish", "a/x")
    assert [log["event"] for log in logs] == ["acl.token_rules_invalid"]


def test_token_rule_forms() -> None:
    assert token_rule(("consume", "$queue/q", True)) == AclRule(
        action="consume", pattern="$queue/q", allow=True
    )
    existing = rule("publish", "a")
    assert token_rule(existing) is existing
    with pytest.raises(AclError):
        token_rule("publish a")


# -- decisions are cached, refusals logged -----------------------------------------------------


def test_decisions_are_cached_per_identity() -> None:
    acl = Acl(INBOX)
    assert acl.allows(ALICE, "subscribe", "inbox/alice/x")
    assert not acl.allows(BOB, "subscribe", "inbox/alice/x")
    assert acl.allows(ALICE, "subscribe", "inbox/alice/x")
    twin = ident("alice", "users")  # another object: its own view, same answers
    assert acl.allows(twin, "subscribe", "inbox/alice/x")


def test_denied_logs_who_what_and_where() -> None:
    with capture_logs() as logs:
        Acl().denied(ALICE, "publish", "a/b", "dev-1")
    assert logs == [
        {
            "event": "acl.denied",
            "log_level": "info",
            "user": "alice",
            "client_id": "dev-1",
            "action": "publish",
            "destination": "a/b",
        }
    ]


# -- checking rules and the configuration ------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "key", "problem"),
    [
        (rule("publish", "a"), "user", "exactly one of user, group or anonymous"),
        (rule("publish", "a", user="u", group="g"), "user", "exactly one"),
        (rule("publish", "a", user=""), "user", "must not be empty"),
        (rule("read", "a", user="u"), "action", "must be one of"),  # type: ignore[arg-type]
        (rule("publish", "", user="u"), "pattern", "empty topic filter"),
        (rule("publish", "a/#/b", user="u"), "pattern", "misplaced '#'"),
        (rule("publish", "a/%n", user="u"), "pattern", "unknown placeholder %n"),
        (rule("subscribe", "$share/g/a", user="u"), "pattern", "without $share"),
        (rule("subscribe", "$queue/jobs", user="u"), "pattern", "goes with consume"),
        (rule("consume", "jobs", user="u"), "pattern", "must start with $queue/"),
    ],
)
def test_check_rule_names_the_key(bad: AclRule, key: str, problem: str) -> None:
    with pytest.raises(AclError) as caught:
        check_rule(bad)
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_placeholders_may_stand_inside_a_level() -> None:
    check_pattern("users/%u-%c/#")


ACL_TOML = """
[[acl]]
group = "users"
action = "all"
pattern = "inbox/%u/#"
allow = true

[[acl]]
anonymous = true
action = "subscribe"
pattern = "public/#"
allow = true
"""


def test_acl_tables_load_in_order() -> None:
    config = config_mod.loads(ACL_TOML, "acl.toml")
    acl = config_mod.build_acl(config)
    assert [r.pattern for r in acl.rules] == ["inbox/%u/#", "public/#"]
    assert acl.rules[1].anonymous
    assert acl.allows(ALICE, "publish", "inbox/alice/x")
    assert acl.allows(None, "subscribe", "public/x")
    assert not acl.allows(None, "publish", "public/x")
    assert len(config_mod.build_acl(config_mod.loads("", "empty.toml"))) == 0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'user = "a"\naction = "publish"\npattern = "x/#/y"\nallow = true',
            "acl.toml: acl[0].pattern: misplaced '#' in 'x/#/y'",
        ),
        (
            'action = "publish"\npattern = "x"\nallow = true',
            "acl.toml: acl[0].user: give exactly one of user, group or anonymous = true",
        ),
        (
            'group = "g"\naction = "read"\npattern = "x"\nallow = true',
            "acl.toml: acl[0].action: invalid enum value 'read'",
        ),
        ('group = "g"\naction = "publish"\npattern = "x"', "acl.toml: acl[0].allow: required"),
        (
            'group = "g"\naction = "publish"\npattern = "x"\nallow = true\ntopic = "y"',
            "acl.toml: acl[0].topic: unknown key",
        ),
    ],
)
def test_acl_table_errors_name_the_key(table: str, message: str) -> None:
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads("[[acl]]\n" + table, "acl.toml")
    assert str(caught.value).startswith(message)
