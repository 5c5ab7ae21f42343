"""Telling an outage of a dependency from a failure of the request or record at hand.

One rule for the whole platform: an HTTP request that fails because the database or broker
is down answers 503 (retry), and a Kafka record that fails so holds its partition instead
of counting towards its dead letter.
"""

from __future__ import annotations


class DependencyUnavailable(Exception):
    """Raised by our own code when a dependency is known to be down."""


# SQLSTATE classes and codes of a database that is unreachable, restarting or out of
# resources: errors of the server, never of the statement.
_SQLSTATE_CLASSES = ("08", "53", "58")
_SQLSTATES = ("57P01", "57P02", "57P03")  # admin shutdown, crash shutdown, cannot connect now
_ERROR_NAMES = (
    "ConnectionDoesNotExistError",  # asyncpg: the server went away mid-statement
    "KafkaConnectionError",
    "KafkaTimeoutError",
    "NodeNotReadyError",
)


def is_outage(error: BaseException) -> bool:
    """True when ``error``, or an error it was raised from, means a dependency is down."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_outage(current):
            return True
        current = current.__cause__ or current.__context__
    return False


# asyncpg, when a statement starts on a pooled connection whose protocol is still consuming
# an error: seen at the moment PostgreSQL was killed under load (a chaos run), on
# connections the server was closing. A retry gets another connection. (Using one connection
# from two tasks at once is an InterfaceError instead, and stays the request's own failure.)
def _is_dying_connection(error: BaseException) -> bool:
    name, message = type(error).__name__, str(error)
    return name == "InternalClientError" and message.startswith("cannot switch to state")


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, DependencyUnavailable | OSError | TimeoutError):
        return True
    if _is_dying_connection(error):
        return True
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and (sqlstate[:2] in _SQLSTATE_CLASSES or sqlstate in _SQLSTATES):
        return True
    return any(cls.__name__ in _ERROR_NAMES for cls in type(error).__mro__)
