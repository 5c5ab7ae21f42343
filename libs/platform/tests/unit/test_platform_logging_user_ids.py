"""User ids in log fields are pseudonymised by the formatter, whatever module logs them."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from billing_platform.logging import USER_ID_KEYS, JsonFormatter, mask_user_id


def _line(**extra: Any) -> str:
    logger = logging.getLogger("billing.test")
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "admin action", (), None, extra=extra
    )
    return JsonFormatter("svc-test").format(record)


@pytest.mark.parametrize("key", sorted(USER_ID_KEYS))
def test_every_user_id_field_is_logged_as_its_pseudonym(key: str) -> None:
    line = _line(**{key: "alice-raw-id"})

    assert json.loads(line)[key] == mask_user_id("alice-raw-id")
    assert "alice-raw-id" not in line


def test_the_fields_services_log_user_ids_under_are_covered() -> None:
    assert {"user_id", "userId", "target_user", "paused_user", "actor"} <= USER_ID_KEYS


def test_a_list_of_user_ids_is_masked_item_by_item() -> None:
    body = json.loads(_line(user_ids=["bob-raw", "carol-raw"]))

    assert body["user_ids"] == [mask_user_id("bob-raw"), mask_user_id("carol-raw")]


def test_an_id_masked_already_is_not_masked_twice() -> None:
    masked = mask_user_id("dave-raw")

    assert json.loads(_line(user=masked))["user"] == masked


def test_a_user_target_keeps_its_kind_and_hides_the_id() -> None:
    line = _line(target="user:erin-raw")

    assert json.loads(line)["target"] == "user:" + mask_user_id("erin-raw")
    assert "erin-raw" not in line


def test_targets_that_are_not_users_stay_readable() -> None:
    body = json.loads(_line(target="switch:purchasesEnabled", event_id="evt_123"))

    assert body["target"] == "switch:purchasesEnabled"
    assert body["event_id"] == "evt_123"


def test_user_id_fields_nested_in_a_dict_are_masked() -> None:
    line = _line(change={"actor": "ops-raw", "name": "purchasesEnabled"})

    assert json.loads(line)["change"] == {
        "actor": mask_user_id("ops-raw"),
        "name": "purchasesEnabled",
    }
    assert "ops-raw" not in line


def test_values_that_are_not_text_are_left_alone() -> None:
    body = json.loads(_line(user_id=None, actor=42))

    assert body["user_id"] is None
    assert body["actor"] == 42
