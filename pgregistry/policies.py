"""What a pool does with a connection on return (``reset``) and at checkout (``ping``).

Both accept the spellings users already have: the original PooledPg's integers for ``reset``
and names everywhere. The parsers name the argument in their error so a typo in a config
file or a constructor call says which knob is wrong.
"""

from __future__ import annotations

import enum

__all__ = ["PingPolicy", "ResetPolicy", "parse_ping", "parse_reset"]


class ResetPolicy(enum.Enum):
    """How a connection is cleaned when it goes back to the pool.

    ``ROLLBACK_IF_NEEDED`` (0, default)
        Roll back when ``begin()`` was called or the server reports an open or failed
        transaction. No round trip otherwise, so it is the cheapest safe choice.
    ``ROLLBACK`` (1)
        Always one round trip on return: ``ROLLBACK`` when a transaction is open, otherwise a
        bare ``SELECT`` that proves the connection alive, so a dead connection is dropped on
        return instead of being found at the next checkout. A ``ROLLBACK`` outside a transaction
        is never sent: PostgreSQL would log a warning for each one.
    ``RECONNECT`` (2)
        Close and reopen the connection: a new backend for every borrower. Slow, but nothing
        of the previous session can survive.
    ``DISCARD``
        Roll back if needed, then ``DISCARD ALL`` and replay ``setsession``: session settings,
        ``SET ROLE``, temporary tables, prepared statements, advisory locks and ``LISTEN``
        registrations of one borrower never reach the next. One extra round trip.
    """

    ROLLBACK_IF_NEEDED = "rollback_if_needed"
    ROLLBACK = "rollback"
    RECONNECT = "reconnect"
    DISCARD = "discard"


class PingPolicy(enum.Enum):
    """When a pooled connection is checked with a round trip before a caller gets it.

    ``NEVER``: trust the connection; a lost one is still reopened transparently on first use.
    ``IDLE`` (default): check when it has been idle longer than ``ping_after`` seconds.
    ``ALWAYS``: check at every checkout (one extra round trip each time).
    """

    NEVER = "never"
    IDLE = "idle"
    ALWAYS = "always"


_RESET_INTS = {
    0: ResetPolicy.ROLLBACK_IF_NEEDED,
    1: ResetPolicy.ROLLBACK,
    2: ResetPolicy.RECONNECT,
}


def _choices(enum_cls: type[enum.Enum]) -> str:
    return ", ".join(repr(member.value) for member in enum_cls)


def parse_reset(value: object, *, name: str = "reset") -> ResetPolicy:
    """Turn ``0/1/2``, ``None``, ``False``, ``True`` or a policy name into a :class:`ResetPolicy`.

    ``None`` and ``False`` mean the default (0) and ``True`` means 1, as in the original PooledPg.
    """
    if isinstance(value, ResetPolicy):
        return value
    if value is None or value is False:
        return ResetPolicy.ROLLBACK_IF_NEEDED
    if value is True:
        return ResetPolicy.ROLLBACK
    if isinstance(value, int):
        try:
            return _RESET_INTS[value]
        except KeyError:
            raise ValueError(
                f"{name}: unknown reset policy {value!r}; use 0, 1, 2 or one of "
                f"{_choices(ResetPolicy)}"
            ) from None
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        if key.isdigit():
            return parse_reset(int(key), name=name)
        try:
            return ResetPolicy(key)
        except ValueError:
            pass
    raise ValueError(
        f"{name}: unknown reset policy {value!r}; use 0, 1, 2 or one of {_choices(ResetPolicy)}"
    )


def parse_ping(value: object, *, name: str = "ping") -> PingPolicy:
    """Turn ``"never"``, ``"idle"`` or ``"always"`` into a :class:`PingPolicy`."""
    if isinstance(value, PingPolicy):
        return value
    if isinstance(value, str):
        try:
            return PingPolicy(value.strip().lower())
        except ValueError:
            pass
    raise ValueError(f"{name}: unknown ping policy {value!r}; use one of {_choices(PingPolicy)}")
