"""The Idempotency-Key decision and the request hash."""

from __future__ import annotations

import pytest
from billing_platform.errors import ApiError
from checkout.idempotency import Decision, StoredKey, check_key, decide, request_hash

BODY = {"packageCode": "starter", "returnTo": "/chat"}
HASH = request_hash(BODY)


def test_hash_is_canonical() -> None:
    assert request_hash({"returnTo": "/chat", "packageCode": "starter"}) == HASH
    assert request_hash({**BODY, "returnTo": "/"}) != HASH
    assert len(HASH) == 64


def test_a_fresh_claim_is_new() -> None:
    assert decide(None, HASH) is Decision.NEW


def test_done_with_same_body_is_replayed() -> None:
    stored = StoredKey(HASH, "done", 201, {"purchaseId": "p"})
    assert decide(stored, HASH) is Decision.REPLAY


def test_other_body_is_a_conflict_whatever_the_state() -> None:
    other = request_hash({**BODY, "packageCode": "growth"})
    assert decide(StoredKey(other, "done", 201, {}), HASH) is Decision.CONFLICT
    assert decide(StoredKey(other, "in_progress"), HASH) is Decision.CONFLICT


def test_unfinished_with_same_body_is_in_progress() -> None:
    assert decide(StoredKey(HASH, "in_progress"), HASH) is Decision.IN_PROGRESS


@pytest.mark.parametrize("key", ["", "   ", "k" * 256])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_key(key)
    assert caught.value.status == 422


def test_a_normal_key_passes() -> None:
    assert check_key("order-42") == "order-42"
