"""Dev credentials and the stack layout."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from billing_cli import keys
from billing_cli.layout import SERVICES, Layout
from billing_platform.auth import JwtVerifier
from billing_platform.errors import ApiError


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout("t", tmp_path)


def test_minted_token_is_accepted_by_the_platform_verifier(layout: Layout) -> None:
    token = keys.mint_token(layout, "user-5", roles=["admin", "service"])
    _, public = keys.ensure_keys(layout)

    principal = JwtVerifier.from_files([public], keys.ISSUER, keys.AUDIENCE).verify(token)

    assert principal.user_id == "user-5"
    assert principal.roles == frozenset({"admin", "service"})


def test_minted_token_without_roles_has_none(layout: Layout) -> None:
    token = keys.mint_token(layout, "user-6")
    _, public = keys.ensure_keys(layout)

    assert JwtVerifier.from_files([public], keys.ISSUER, keys.AUDIENCE).verify(token).roles == (
        frozenset()
    )


def test_minted_token_with_mfa_is_stepped_up_and_without_is_not(layout: Layout) -> None:
    _, public = keys.ensure_keys(layout)
    verifier = JwtVerifier.from_files([public], keys.ISSUER, keys.AUDIENCE)

    stepped_up = verifier.verify(keys.mint_token(layout, "ops", ["admin"], mfa=True))
    plain = verifier.verify(keys.mint_token(layout, "ops", ["admin"]))

    assert stepped_up.stepped_up_within(verifier.mfa_max_age_s)
    assert not plain.stepped_up_within(verifier.mfa_max_age_s)


def test_minted_token_with_negative_ttl_is_rejected(layout: Layout) -> None:
    token = keys.mint_token(layout, "user-7", ttl_s=-60)
    _, public = keys.ensure_keys(layout)

    with pytest.raises(ApiError) as info:
        JwtVerifier.from_files([public], keys.ISSUER, keys.AUDIENCE).verify(token)
    assert info.value.status == 401


def test_keys_are_made_once_and_kept(layout: Layout) -> None:
    private, public = keys.ensure_keys(layout)
    before = (private.read_bytes(), public.read_bytes())

    assert keys.ensure_keys(layout) == (private, public)
    assert (private.read_bytes(), public.read_bytes()) == before
    assert private.parent == layout.keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_secrets_are_stable_across_calls(layout: Layout) -> None:
    first = keys.ensure_secrets(layout)

    assert keys.ensure_secrets(layout) == first
    assert first["stripe_api_key"].startswith("sk_test_")
    assert first["stripe_webhook_secret"].startswith("whsec_")
    assert first["postgres_password"]


def test_secrets_differ_between_stacks(tmp_path: Path) -> None:
    a = keys.ensure_secrets(Layout("a", tmp_path))
    b = keys.ensure_secrets(Layout("b", tmp_path))

    assert a["postgres_password"] != b["postgres_password"]


def test_secrets_file_is_private(layout: Layout) -> None:
    keys.ensure_secrets(layout)

    mode = (layout.keys / "secrets.json").stat().st_mode

    assert stat.S_IMODE(mode) == 0o600


def test_db_role_passwords_are_kept_and_a_new_role_gets_one(layout: Layout) -> None:
    first = keys.ensure_db_passwords(layout, ["ledger_owner", "ledger_runtime"])
    later = keys.ensure_db_passwords(layout, ["ledger_runtime", "metering_runtime"])

    assert later["ledger_runtime"] == first["ledger_runtime"]
    assert len({*first.values(), later["metering_runtime"]}) == 3
    assert stat.S_IMODE((layout.keys / "db-roles.json").stat().st_mode) == 0o600


def test_layout_paths_live_under_the_stack_state(tmp_path: Path) -> None:
    layout = Layout("t", tmp_path)

    assert layout.state == tmp_path / ".local" / "t"
    assert layout.keys.parent == layout.run.parent == layout.logs.parent == layout.state
    assert layout.cache == tmp_path / ".local" / "cache"


def test_test_layout_ports_are_dev_ports_plus_10000() -> None:
    dev, test = Layout.dev(), Layout.test()

    for name in (
        "postgres_port",
        "kafka_port",
        "kafka_controller_port",
        "stripe_mock_port",
        "devllm_port",
    ):
        assert getattr(test, name) == getattr(dev, name) + 10000
    for service in SERVICES:
        assert test.service_port(service) == dev.service_port(service) + 10000


def test_test_layout_has_its_own_state_dir() -> None:
    assert Layout.test().state != Layout.dev().state
    assert Layout.test().cache == Layout.dev().cache
