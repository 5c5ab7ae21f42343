"""Which failures are outages of a dependency (retry, 503) and which the request's own."""

from __future__ import annotations

import asyncpg
import pytest
from billing_platform.outages import DependencyUnavailable, is_outage


class DatabaseStartingUp(Exception):
    """Shaped like asyncpg's CannotConnectNowError: only the SQLSTATE tells what it is."""

    sqlstate = "57P03"


def asyncpg_error(name: str, message: str) -> Exception:
    error: Exception = getattr(asyncpg.exceptions, name)(message)
    return error


@pytest.mark.parametrize(
    "error",
    [
        DatabaseStartingUp("the database system is starting up"),
        asyncpg_error("CannotConnectNowError", "the database system is starting up"),
        asyncpg_error("ConnectionDoesNotExistError", "connection was closed"),
        asyncpg.exceptions._base.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg_error("TooManyConnectionsError", "too many clients"),
        ConnectionRefusedError(111, "Connection refused"),
        DependencyUnavailable("broker down"),
    ],
)
def test_dependency_outages_are_infrastructure_errors(error: Exception) -> None:
    assert is_outage(error)


def test_an_error_raised_from_an_outage_is_an_infrastructure_error() -> None:
    wrapped = RuntimeError("could not store the grant")
    wrapped.__cause__ = ConnectionRefusedError(111, "Connection refused")

    assert is_outage(wrapped)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("amount must be positive"),
        asyncpg_error("UniqueViolationError", "duplicate key"),
        asyncpg_error("NumericValueOutOfRangeError", "bigint out of range"),
        RuntimeError("cannot decode"),
        asyncpg_error("QueryCanceledError", "canceling statement due to statement timeout"),
        asyncpg.exceptions._base.InterfaceError(
            "cannot perform operation: another operation is in progress"
        ),
        asyncpg.exceptions._base.InternalClientError("unexpected codec state"),
    ],
)
def test_errors_of_the_record_are_not_infrastructure_errors(error: Exception) -> None:
    assert not is_outage(error)
