"""Checks of the values a pool is built with; each error names the argument it is about."""

from __future__ import annotations

__all__ = ["check_name", "check_seconds", "check_size", "check_sizes"]


def check_size(name: str, value: object) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: must be an integer >= 0 (got {value!r})")
    return value


def check_seconds(name: str, value: object, *, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name}: must be a number of seconds >= 0 (got None)")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name}: must be a number of seconds >= 0 (got {value!r})")
    return float(value)


def check_sizes(
    mincached: object, maxcached: object, maxconnections: object, maxusage: object
) -> tuple[int, int, int]:
    """``mincached, maxcached, maxconnections`` checked and made consistent, as PooledPg does:
    ``maxcached`` is raised to ``mincached``, ``maxconnections`` to ``maxcached``.
    """
    least = check_size("mincached", mincached)
    most_idle = check_size("maxcached", maxcached)
    most = check_size("maxconnections", maxconnections)
    if most and least > most:
        raise ValueError(
            f"mincached: {least} connections cannot be opened at start when "
            f"maxconnections is {most}"
        )
    if most_idle and most_idle < least:
        most_idle = least
    if most and most < most_idle:
        most = most_idle
    if maxusage is not None:
        check_size("maxusage", maxusage)
    return least, most_idle, most


def check_name(name: object) -> None:
    """A pool's name: None (a number is given) or a non-empty string."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name: must be a non-empty string (got {name!r})")
