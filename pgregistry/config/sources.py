"""Where configuration comes from: ``pgpools.toml``, ``PGPOOLS__`` variables and secret files.

Each source is a pydantic-settings source that returns a nested dict; :func:`read_sources`
calls them one by one (rather than letting ``BaseSettings`` merge them out of sight) so that
every value keeps the name of the place it came from. An error message can then say *which*
file, variable or secret file to fix.

Precedence, lowest first (:data:`PRECEDENCE`): the TOML file, then secret files, then the
environment. A later source replaces single keys of an earlier one; tables are merged key by
key. ``[defaults]`` versus ``[pools.NAME]`` is a different question, settled in
:mod:`pgregistry.config.loader` after this merge.

Nothing here validates values: it reads, merges and remembers origins. It raises
:class:`~pgregistry.errors.ConfigError` only when a source cannot be read at all (a named file
that does not exist, TOML that does not parse, a variable that is not valid JSON).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NestedSecretsSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from ..conninfo import TARGET_KEYWORDS, ConninfoError, parse_conninfo, redact
from ..errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "PRECEDENCE",
    "PROCESSES_ENV",
    "SECRETS_DIR_ENV",
    "TOP_LEVEL_KEYS",
    "RawConfig",
    "read_sources",
    "replaced_by",
]

#: Environment variable naming the configuration file.
CONFIG_ENV = "PGPOOLS_CONFIG"
#: Environment variable naming the secrets directory.
SECRETS_DIR_ENV = "PGPOOLS_SECRETS_DIR"
#: Environment variable a process manager sets to the number of processes sharing every
#: ``[servers.NAME]`` budget that does not set ``processes`` itself (gunicorn's workers).
PROCESSES_ENV = "PGPOOLS_PROCESSES"
#: The file read when neither an argument nor ``PGPOOLS_CONFIG`` names one (may be absent).
DEFAULT_CONFIG_FILE = "pgpools.toml"
#: ``PGPOOLS__POOLS__BILLING__MAXCACHED=8`` sets ``pools.billing.maxcached``.
ENV_PREFIX = "PGPOOLS__"
ENV_DELIMITER = "__"
#: Sources from lowest to highest precedence.
PRECEDENCE = ("file", "secrets", "environment")


class _Shape(BaseSettings):
    """The top level of the configuration, as the sources see it: tables of raw values.

    Only the top-level keys matter here (they tell the sources which variables and secret
    files to read); values are checked in :mod:`pgregistry.config`. A later ``[tenants.NAME]``
    or ``[servers.NAME]`` table is one more ``dict[str, dict[str, Any]]`` field here.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        case_sensitive=False,
        # An empty variable (docker compose passes them) means "not set", not "set to ''".
        env_ignore_empty=True,
        extra="ignore",
    )

    default: str | None = None
    defaults: dict[str, Any] = {}
    pools: dict[str, dict[str, Any]] = {}
    tenants: dict[str, dict[str, Any]] = {}
    servers: dict[str, dict[str, Any]] = {}


#: The top-level keys of a configuration.
TOP_LEVEL_KEYS = frozenset(_Shape.model_fields)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


Path_ = tuple[str, ...]


def _leaves(data: Mapping[str, Any], prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, path)
        else:
            yield path, value


#: Target keys that ``conninfo`` excludes; ``password`` may accompany a conninfo without one.
_EXCLUSIVE_TARGET = tuple(key for key in TARGET_KEYWORDS if key != "password")


def replaced_by(table: Mapping[str, Any]) -> set[str]:
    """Keys of a less specific pool table that ``table`` replaces besides its own keys.

    The connection target is set either by ``conninfo`` or by the separate keys, never by a
    mix: a ``conninfo`` replaces the separate target keys (and every libpq keyword it sets,
    ``password`` included) of the table below it; a separate target key replaces its
    ``conninfo``. Used between sources (file < secret files < environment) and from
    ``[defaults]`` to a pool.
    """
    drop: set[str] = set()
    if "conninfo" in table:
        drop.update(_EXCLUSIVE_TARGET)
        text = table["conninfo"]
        text = text.get_secret_value() if hasattr(text, "get_secret_value") else text
        if isinstance(text, str):
            with contextlib.suppress(ConninfoError):  # reported when conninfo is validated
                drop.update(parse_conninfo(text))
    if any(key in table for key in _EXCLUSIVE_TARGET):
        drop.add("conninfo")
    return drop


def _is_pool_table(path: Path_) -> bool:
    return path == ("defaults",) or (len(path) == 2 and path[0] in ("pools", "tenants"))


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], path: Path_ = ()) -> dict[str, Any]:
    out = dict(base)
    if _is_pool_table(path):
        for key in replaced_by(over):
            out.pop(key, None)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = _merge(old, value, (*path, str(key)))
        else:
            out[key] = value
    return out


@dataclass
class _Layer:
    kind: str  # one of PRECEDENCE
    data: dict[str, Any]
    labels: dict[Path_, str]  # leaf path -> where it came from, for messages
    summary: str  # the whole source, when one label per value would be too many


@dataclass
class RawConfig:
    """The merged raw configuration and where each value came from."""

    data: dict[str, Any] = field(default_factory=dict)
    #: Human-readable description of the sources used, for ``Settings.source``.
    source: str = "no configuration file"
    #: The configuration file that was read, if any.
    file: Path | None = None
    #: Problems found while reading (unknown variables, pools named only by secret files).
    problems: list[str] = field(default_factory=list)
    layers: list[_Layer] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> RawConfig:
        """A configuration given as data (the TOML shape), every value labelled ``source``."""
        copied = _merge({}, data)
        labels = {leaf: source for leaf, _ in _leaves(copied)}
        return cls(data=copied, source=source, layers=[_Layer("file", copied, labels, source)])

    def where(self, path: Path_) -> str:
        """Name the place(s) that set ``path`` (a key, or a table and everything under it)."""
        for layer in reversed(self.layers):  # the winning source first
            if path in layer.labels:
                return layer.labels[path]
        found: list[str] = []
        for layer in reversed(self.layers):
            labels = {
                label
                for leaf, label in layer.labels.items()
                if leaf[: len(path)] == path or path[: len(leaf)] == leaf
            }
            if len(labels) == 1:
                found.append(labels.pop())
            elif labels:
                found.append(layer.summary)
        return ", ".join(found)

    def only_from(self, path: Path_, kind: str) -> bool:
        """Whether every value under ``path`` came from sources of ``kind``."""
        kinds = {
            layer.kind
            for layer in self.layers
            for leaf in layer.labels
            if leaf[: len(path)] == path
        }
        return kinds == {kind}


def _config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> tuple[Path, str]:
    """The file to read and how it was named ("argument", CONFIG_ENV or "default")."""
    if path is not None:
        return Path(path), "argument"
    named = env.get(CONFIG_ENV, "")
    if named:
        return Path(named), CONFIG_ENV
    return Path(DEFAULT_CONFIG_FILE), "default"


def _read_toml(file: Path) -> _Layer:
    try:
        data = TomlConfigSettingsSource(_Shape, toml_file=file)()
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give line and column, never the text of the line.
        msg = f"{file}: not valid TOML: {redact(exc)}"
        raise ConfigError(f"invalid configuration: {msg}", [msg]) from None
    except UnicodeDecodeError as exc:
        # Never the bytes themselves: they may be part of a password.
        msg = f"{file}: not valid UTF-8 (at byte {exc.start}); save the file as UTF-8"
        raise ConfigError(f"invalid configuration: {msg}", [msg]) from None
    except OSError as exc:
        msg = f"{file}: cannot be read: {exc.strerror or exc}"
        raise ConfigError(f"invalid configuration: {msg}", [msg]) from None
    label = str(file)
    return _Layer("file", data, {leaf: label for leaf, _ in _leaves(data)}, label)


def _env_label(path: Path_, names: Mapping[str, str]) -> str:
    # The variable is PGPOOLS__A__B__C, or a shorter one holding JSON (PGPOOLS__A='{"b": ...}').
    for cut in range(len(path), 0, -1):
        key = (ENV_PREFIX + ENV_DELIMITER.join(path[:cut])).lower()
        if key in names:
            return f"environment: {names[key]}"
    return "environment"


def _undecodable(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (Python keeps them as surrogates)."""
    return any("\ud800" <= char <= "\udfff" for char in text)


def _read_env(env: Mapping[str, str], problems: list[str]) -> _Layer:
    for name, value in env.items():
        if name.upper().startswith(ENV_PREFIX) and (_undecodable(name) or _undecodable(value)):
            shown = name if not _undecodable(name) else ascii(name)
            msg = f"environment: {shown} is not valid UTF-8; set it as UTF-8 text"
            raise ConfigError(f"invalid configuration: {msg}", [msg])
    try:
        data = _MappingEnvSource(_Shape, env)()
    except SettingsError as exc:
        # pydantic-settings names the field, never the value.
        found = re.search(r'field "(\w+)"', str(exc))
        var = ENV_PREFIX + (found.group(1).upper() if found else "*")
        msg = f"environment: {var} is not valid JSON"
        raise ConfigError(f"invalid configuration: {msg}", [msg]) from None
    names: dict[str, str] = {}
    for name, value in env.items():
        if not name.upper().startswith(ENV_PREFIX) or value == "":
            continue
        names[name.lower()] = name
        head = name[len(ENV_PREFIX) :].split(ENV_DELIMITER, 1)[0].lower()
        if head not in TOP_LEVEL_KEYS:
            problems.append(
                f"{head or '(empty)'}: unknown key; the top-level keys are "
                f"{', '.join(sorted(TOP_LEVEL_KEYS))} [environment: {name}]"
            )
    labels = {leaf: _env_label(leaf, names) for leaf, _ in _leaves(data)}
    return _Layer("environment", data, labels, "environment")


def _undecodable_file(directory: Path) -> str:
    """The first secret file under ``directory`` that is not UTF-8 (for the message)."""
    for path in sorted(directory.rglob("*")):
        with contextlib.suppress(OSError):
            if path.is_file():
                try:
                    path.read_bytes().decode("utf-8")
                except UnicodeDecodeError:
                    return f"secret file {path}"
    return f"a secret file in {directory}"


def _read_secrets(directory: Path) -> _Layer:
    try:
        source = NestedSecretsSettingsSource(
            SecretsSettingsSource(_Shape, secrets_dir=directory),
            secrets_dir=directory,
            secrets_dir_missing="error",
            secrets_prefix="",
            secrets_nested_delimiter=ENV_DELIMITER,
            secrets_case_sensitive=False,
        )
        data = source()
    except UnicodeDecodeError:
        msg = f"{_undecodable_file(directory)}: not valid UTF-8; write the secret as UTF-8 text"
        raise ConfigError(f"invalid configuration: {msg}", [msg]) from None
    except (SettingsError, OSError) as exc:
        msg = f"secrets directory {directory}: {exc}"
        raise ConfigError(f"invalid configuration: {msg}", [msg]) from None
    labels = {
        leaf: f"secret file: {directory / ENV_DELIMITER.join(leaf)}" for leaf, _ in _leaves(data)
    }
    return _Layer("secrets", data, labels, f"secret files in {directory}")


def read_sources(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    secrets_dir: str | os.PathLike[str] | None = None,
) -> RawConfig:
    """Read the file, secret files and environment; merge them by :data:`PRECEDENCE`.

    ``path`` None means ``PGPOOLS_CONFIG`` from ``env``, else ``./pgpools.toml``; a file named
    by either must exist, the default one may be absent. ``secrets_dir`` None means
    ``PGPOOLS_SECRETS_DIR`` from ``env``, else no secret files; a named directory must exist.
    """
    raw = RawConfig()
    described: list[str] = []

    file, named_by = _config_path(path, env)
    if file.is_file():
        raw.file = file.resolve()
        raw.layers.append(_read_toml(raw.file))
        described.append(str(raw.file))
    elif named_by != "default" or file.exists():
        how = "" if named_by == "argument" else f" (named by {named_by})"
        what = "is not a file" if file.exists() else "does not exist"
        msg = f"configuration file {file.absolute()}{how} {what}"
        raise ConfigError(f"invalid configuration: {msg}", [msg])

    if secrets_dir is None and env.get(SECRETS_DIR_ENV):
        secrets_dir = env[SECRETS_DIR_ENV]
    if secrets_dir is not None:
        directory = Path(secrets_dir).absolute()
        if not directory.is_dir():
            msg = f"secrets directory {directory} does not exist or is not a directory"
            raise ConfigError(f"invalid configuration: {msg}", [msg])
        layer = _read_secrets(directory)
        raw.layers.append(layer)
        if layer.labels:
            described.append(f"secret files in {directory}")

    env_layer = _read_env(env, raw.problems)
    raw.layers.append(env_layer)
    if env_layer.labels:
        described.append("environment")

    for layer in raw.layers:
        raw.data = _merge(raw.data, layer.data)
    if _apply_processes_env(raw, env) and "environment" not in described:
        described.append("environment")
    raw.source = " + ".join(described) if described else "no configuration file"

    # A secret file cannot declare a pool: "pools__biling__password" would otherwise create
    # a pool "biling" holding nothing but a password.
    pools = raw.data.get("pools")
    if isinstance(pools, Mapping):
        for name in pools:
            if raw.only_from(("pools", str(name)), "secrets"):
                where = raw.where(("pools", str(name)))
                raw.problems.append(
                    f"pools.{name}: only secret files name this pool; declare it in the "
                    f"configuration file or the environment (a typo?) [{where}]"
                )
    _refuse_env_typos(raw)
    return raw


def _apply_processes_env(raw: RawConfig, env: Mapping[str, str]) -> bool:
    """``$PGPOOLS_PROCESSES`` as the ``processes`` of every server table that has none from
    any source (a table's own key, or ``PGPOOLS__SERVERS__NAME__PROCESSES``, wins). The value
    is validated with the table, so a bad one is reported as ``servers.NAME.processes``,
    naming the variable. Returns whether it applied to any server."""
    value = env.get(PROCESSES_ENV, "").strip()
    servers = raw.data.get("servers")
    if not value or not isinstance(servers, Mapping):
        return False
    data: dict[str, Any] = {}
    labels: dict[Path_, str] = {}
    for name, table in servers.items():
        if isinstance(table, Mapping) and "processes" not in table:
            data[str(name)] = {"processes": value}
            labels[("servers", str(name), "processes")] = f"environment: {PROCESSES_ENV}"
    if not data:
        return False
    layer = _Layer("environment", {"servers": data}, labels, f"environment: {PROCESSES_ENV}")
    raw.layers.append(layer)
    raw.data = _merge(raw.data, layer.data)
    return True


#: Keys that give a pool a connection target of its own.
_OWN_TARGET = frozenset((*TARGET_KEYWORDS, "conninfo"))


def _refuse_env_typos(raw: RawConfig) -> None:
    """Refuse a pool named only by the environment, with no target of its own, whose name
    is close to a pool of the file: ``PGPOOLS__POOLS__MIAN__MAXCACHED=8`` would otherwise
    create a pool ``mian`` on the defaults' target and leave ``main`` as it was."""
    pools = raw.data.get("pools")
    file_pools = [
        str(name)
        for layer in raw.layers
        if layer.kind == "file"
        for name in (layer.data.get("pools") or {})
    ]
    if not isinstance(pools, Mapping) or not file_pools:
        return
    for name, table in pools.items():
        if name in file_pools or not raw.only_from(("pools", str(name)), "environment"):
            continue
        if isinstance(table, Mapping) and _OWN_TARGET & {str(k).lower() for k in table}:
            continue  # a pool declared from the environment alone, on purpose
        close = difflib.get_close_matches(str(name), file_pools, n=1, cutoff=0.6)
        if close:
            raw.problems.append(
                f"pools.{name}: only the environment names this pool and it sets no "
                f"connection target; did you mean {close[0]!r}? (declare it with a target, "
                f"e.g. a dbname, if it is meant) [{raw.where(('pools', str(name)))}]"
            )
