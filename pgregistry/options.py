"""The pool settings in one table: name, defaults, unit and documentation of each.

This is the one source of truth that the configuration models (:mod:`pgregistry.config`),
``PooledPg``'s signature and README's ``#### name`` headings are checked against
(``tests/unit/test_options.py`` says what to update when they drift). It also holds the other
facts several modules need: the default-pool rule (:func:`default_pool_name`), the secret key
names (:data:`SECRET_KEYS`) and the accepted alternative spellings (:data:`KEY_ALIASES`).

A leaf: it imports nothing of ours and nothing heavy (no pydantic), so the pool, the registry
and the command line can all use it.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CONFIG_ONLY",
    "DEFAULT_POOL",
    "KEY_ALIASES",
    "OPTIONS",
    "SECRET_KEYS",
    "Option",
    "default_pool_name",
    "option",
]


@dataclass(frozen=True)
class Option:
    """One pool setting.

    ``default`` is ``PooledPg``'s (the original's where it had the argument);
    ``config_default`` what a pool declared in the configuration gets when neither its table
    nor ``[defaults]`` sets the key. They differ only where :attr:`differs_because` says why.
    """

    name: str
    #: ``PooledPg``'s default, in its canonical form (policy names, ``()`` for no statements).
    default: object
    #: Python type as the configuration documents it.
    type_name: str
    #: Unit of the value ("connections", "seconds", ...), "" when it has none.
    unit: str
    #: One paragraph: what the setting does and what 0/none means.
    doc: str
    #: README group: "sizing", "behaviour", "health" or "server".
    section: str
    #: The configuration's default when it differs from ``default`` (see ``differs_because``).
    config_default: object = None
    #: Why the configuration's default differs from ``PooledPg``'s; "" when it does not.
    differs_because: str = ""

    @property
    def effective_config_default(self) -> object:
        """The default a configured pool gets."""
        return self.config_default if self.differs_because else self.default


_BOUNDED = (
    "a pool declared in the configuration with only a target is bounded and waits, as "
    "psycopg_pool and SQLAlchemy users expect (#16); PooledPg() keeps the original's default"
)

#: Every pool setting ``PooledPg`` takes and the configuration offers, in README order.
OPTIONS: tuple[Option, ...] = (
    Option(
        "mincached",
        0,
        "int",
        "connections",
        "Connections opened when the pool is built (0: none).",
        "sizing",
    ),
    Option(
        "maxcached",
        0,
        "int",
        "connections",
        "Most idle connections kept in the pool; a connection returned to a full pool is "
        "closed (0: no limit). A value below mincached is raised to mincached.",
        "sizing",
    ),
    Option(
        "maxconnections",
        0,
        "int",
        "connections",
        "Most connections open at once, idle and in use (0: no limit). A value below "
        "maxcached is raised to maxcached; a mincached above it is refused. PooledPg() "
        "defaults to 0, a configured pool to 10.",
        "sizing",
        config_default=10,
        differs_because=_BOUNDED,
    ),
    Option(
        "blocking",
        False,
        "bool",
        "",
        "What a checkout does when maxconnections are in use: wait (true, in FIFO order, at "
        "most timeout) or fail at once with TooManyConnectionsError (false). PooledPg() "
        "defaults to false, a configured pool to true.",
        "behaviour",
        config_default=True,
        differs_because=_BOUNDED,
    ),
    Option(
        "timeout",
        30.0,
        "float | None",
        "seconds",
        "Seconds a blocking checkout waits before raising PoolTimeoutError (none: forever).",
        "behaviour",
    ),
    Option(
        "maxusage",
        None,
        "int | None",
        "uses",
        "Uses after which a connection is reopened, between uses, never inside a "
        "transaction (0/none: never).",
        "behaviour",
    ),
    Option(
        "setsession",
        (),
        "list[str]",
        "SQL statements",
        "SQL statements run, in order, after every (re)open; a single string is one statement.",
        "behaviour",
    ),
    Option(
        "reset",
        "rollback_if_needed",
        "int | str",
        "",
        "What happens to a connection given back: 0/rollback_if_needed, 1/rollback, "
        "2/reconnect or discard.",
        "behaviour",
    ),
    Option(
        "retry_after_reopen",
        True,
        "bool or 'always'",
        "",
        "After a transparent reopen outside a transaction: run the call again when it cannot "
        "have reached the server (true), never (false), or also when it was lost in flight "
        "('always': a write may run twice).",
        "behaviour",
    ),
    Option(
        "reconnect_timeout",
        0.0,
        "float",
        "seconds",
        "Seconds a (re)open keeps retrying while the server cannot be reached (0: once).",
        "behaviour",
    ),
    Option(
        "max_lifetime",
        3600.0,
        "float | None",
        "seconds",
        "Seconds a connection lives, with up to 10% jitter; closed when idle or returned, "
        "never in use (0/none: forever).",
        "health",
    ),
    Option(
        "max_idle",
        600.0,
        "float | None",
        "seconds",
        "Seconds an idle connection above mincached is kept (none: forever).",
        "health",
    ),
    Option(
        "ping",
        "idle",
        "str",
        "",
        "When a pooled connection is checked with a round trip before a caller gets it: "
        "never, idle (idle longer than ping_after) or always.",
        "health",
    ),
    Option(
        "ping_after",
        30.0,
        "float",
        "seconds",
        "With ping = idle: seconds of idleness after which a connection is checked at checkout.",
        "health",
    ),
    Option(
        "leak_threshold",
        None,
        "float | None",
        "seconds",
        "Seconds after which a checked-out connection is logged once as a possible leak, "
        "with the stack that checked it out (0/none: off).",
        "health",
    ),
    Option(
        "server_pooling",
        "none",
        "str",
        "",
        "The server-side pooler between the pool and PostgreSQL: none (a direct connection), "
        "session or transaction (PgBouncer's pool_mode). Under transaction, what needs a "
        "server session is refused: setsession statements that set session state (SET "
        "without LOCAL, LISTEN, PREPARE, temporary tables, session advisory locks), an "
        "options startup parameter, reset = discard.",
        "server",
    ),
    Option(
        "statement_timeout",
        None,
        "float | None",
        "seconds",
        "Seconds a statement may run before the server cancels it (SQLSTATE 57014): sent at "
        "connect on a direct connection, SET after every open under session pooling, SET "
        "LOCAL in transactions begun with begin() under transaction pooling (none: not set; "
        "0: no timeout, sent explicitly).",
        "server",
    ),
)

_BY_NAME: Mapping[str, Option] = MappingProxyType({o.name: o for o in OPTIONS})

#: Configuration keys of a pool that ``PooledPg`` does not take (documented in README too).
CONFIG_ONLY: Mapping[str, str] = MappingProxyType(
    {"enabled": "false switches the pool off (it is left out of Settings.pools)."}
)

#: Keys whose values are secret (pool keys and libpq keywords): never echoed in a message,
#: masked by ``describe()``; ``passwd`` is the alias of ``password``.
SECRET_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "conninfo",
        "sslpassword",
        "oauth_client_secret",
        "scram_client_key",
        "scram_server_key",
    }
)

#: Other spellings accepted for a key -> the canonical one (``pg.DB``'s ``passwd`` and
#: ``opt``; ``max_connections`` for PooledPg's ``maxconnections``, in pool and server tables).
KEY_ALIASES: Mapping[str, str] = MappingProxyType(
    {"passwd": "password", "opt": "options", "max_connections": "maxconnections"}
)

#: The name of the pool used when none is named and the configuration has no ``default`` key.
DEFAULT_POOL = "default"


def option(name: str) -> Option:
    """The :class:`Option` called ``name`` (KeyError when there is none)."""
    return _BY_NAME[name]


def default_pool_name(default: str | None, pools: Container[str]) -> str | None:
    """The pool used when no name is given: the ``default`` key, else a pool named
    ``default``, else None.

    The one spelling of this rule: the loader, the registry, reload and the command line all
    call it (through ``Settings.default_pool_name()`` when they hold settings).
    """
    if default is not None:
        return default
    return DEFAULT_POOL if DEFAULT_POOL in pools else None
