"""Validated pool configuration from ``pgpools.toml``, the environment and secret files.

::

    default = "app"                       # the pool used when none is named

    [defaults]                            # applies to every pool; a pool's own key wins
    host = "127.0.0.1"
    user = "root"
    maxconnections = 20
    sslmode = "prefer"                    # any libpq keyword

    [pools.app]
    dbname = "pgregistry_app"
    mincached = 2

    [pools.reports]
    conninfo = "postgresql://reporter@replica/reports?target_session_attrs=read-only"

The same keys come from ``PGPOOLS__POOLS__APP__MAXCACHED=8`` style variables (lists as JSON)
and from secret files such as ``$PGPOOLS_SECRETS_DIR/pools__app__password``; precedence is
file < secret files < environment (:mod:`pgregistry.config.sources` reads and merges them).

:func:`load_settings` returns a frozen :class:`Settings` or raises one
:class:`~pgregistry.errors.ConfigError` that lists every problem with its path and source.
No message, ``repr`` or :meth:`PoolSettings.describe` ever holds a password or the secret part
of a ``conninfo``.

The package, one job per module (imports point down this list, never up; none imports pools):

- :mod:`~pgregistry.config.sources`: read the TOML file, secret files and environment; merge.
- :mod:`~pgregistry.config.fields`: field types and validators, pool-name rule.
- :mod:`~pgregistry.config.pool`: :class:`PoolSettings`.
- :mod:`~pgregistry.config.tenant`: :class:`TenantSettings`, tenant keys and identifiers.
- :mod:`~pgregistry.config.settings`: :class:`ServerSettings`, :class:`Settings`.
- :mod:`~pgregistry.config.messages`: the wording of problems.
- :mod:`~pgregistry.config.loader`: :func:`load_settings`, :func:`settings_from_mapping`.

Each pool setting's default and documentation come from :mod:`pgregistry.options`.
"""

from __future__ import annotations

from ..options import default_pool_name
from .fields import TARGET_KEYS, check_pool_name
from .loader import load_settings, settings_from_mapping
from .pool import POOL_OPTION_KEYS, PoolSettings
from .settings import ServerSettings, Settings
from .sources import CONFIG_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX, PROCESSES_ENV, SECRETS_DIR_ENV
from .tenant import DEFAULT_TENANT_PATTERN, PLACEHOLDER_FIELDS, TenantSettings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_TENANT_PATTERN",
    "ENV_PREFIX",
    "PLACEHOLDER_FIELDS",
    "POOL_OPTION_KEYS",
    "PROCESSES_ENV",
    "SECRETS_DIR_ENV",
    "TARGET_KEYS",
    "PoolSettings",
    "ServerSettings",
    "Settings",
    "TenantSettings",
    "check_pool_name",
    "default_pool_name",
    "load_settings",
    "settings_from_mapping",
]
