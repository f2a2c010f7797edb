"""``TenantSettings``: a ``[tenants.NAME]`` template, checking and substituting tenant keys.

A key is untrusted input: it must match ``tenant_pattern``, and it is quoted for each place
it lands in (:mod:`pgregistry.sql`). An identifier built from it must also fit in PostgreSQL's
63 bytes, or two tenants could end up in one schema, role or database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    model_validator,
)

from ..conninfo import MASK
from ..errors import InvalidTenantError
from ..sql import (
    NAMEDATALEN_MAX,
    PLACEHOLDER,
    TENANT,
    TENANT_LITERAL,
    escape_option,
    identifier_bytes,
    placeholders_stand_alone,
    quote_ident,
    quote_literal,
)
from .fields import _SECRET_FIELDS, _doc, _fail, _no_bool, _OptionalSeconds, _Statement, _statements
from .pool import PoolSettings

__all__ = ["DEFAULT_TENANT_PATTERN", "PLACEHOLDER_FIELDS", "TenantSettings"]

#: Tenant keys allowed unless a template sets ``tenant_pattern``.
DEFAULT_TENANT_PATTERN = "[a-z0-9][a-z0-9_]*"
#: Template fields where ``{tenant}`` may appear (``{tenant_literal}`` only in SQL).
PLACEHOLDER_FIELDS = ("dbname", "user", "options", "application_name", "setsession", "search_path")


def _pattern(value: object) -> object:
    if value == "":
        raise _fail("tenant_pattern", "must not be empty")
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise _fail("tenant_pattern", f"is not a valid regular expression: {exc}") from None
    return value


def _schemas(value: object) -> object:
    if isinstance(value, str) and value.lstrip().startswith("["):
        return _statements(value)  # a JSON list, as environment variables give lists
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class TenantSettings(PoolSettings):
    """A ``[tenants.NAME]`` template: the settings of one pool per tenant key.

    ``{tenant}`` may appear in ``dbname``, ``user``, ``options``, ``application_name``,
    ``setsession`` and ``search_path``; :meth:`for_tenant` substitutes a checked key, quoted
    for each place (see there). Tenant pools are built on demand, at most ``max_pools`` at a
    time (the least recently used idle one is closed first), and closed after
    ``idle_pool_timeout`` seconds unused.
    """

    max_pools: Annotated[int, BeforeValidator(_no_bool), Field(ge=1)] = _doc(
        "Most tenant pools open at once.", 100
    )
    idle_pool_timeout: _OptionalSeconds = _doc(
        "Seconds a tenant pool may go unused before it is closed (none: never).", 300.0
    )
    tenant_pattern: Annotated[str, BeforeValidator(_pattern), StringConstraints(min_length=1)] = (
        _doc("Regular expression a whole tenant key must match.", DEFAULT_TENANT_PATTERN)
    )
    tenant_max_length: Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=1000)] = _doc(
        "Longest tenant key accepted.", 48
    )
    search_path: Annotated[tuple[_Statement, ...], BeforeValidator(_schemas)] = _doc(
        "Schemas set as search_path after every (re)open; {tenant} allowed.", ()
    )
    overrides: dict[str, dict[str, Any]] = _doc(
        "Per-tenant settings: [tenants.NAME.overrides.KEY] maxconnections = 20.", {}
    )

    @model_validator(mode="after")
    def _placeholders_where_allowed(self, info: ValidationInfo) -> TenantSettings:
        problems: list[tuple[str, str]] = []
        for key in type(self).model_fields:
            if key in PLACEHOLDER_FIELDS or key in ("name", "tenant_pattern", "overrides"):
                continue
            value = getattr(self, key)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(text, str) and PLACEHOLDER.search(text):
                problems.append(
                    (key, f"{{tenant}} is allowed only in {', '.join(PLACEHOLDER_FIELDS)}")
                )
        for key in ("dbname", "user", "options", "application_name"):
            text = getattr(self, key)
            if isinstance(text, str) and TENANT_LITERAL in text:
                problems.append((key, "use {tenant}; {tenant_literal} is for SQL"))
        for index, statement in enumerate(self.setsession):
            if not placeholders_stand_alone(statement):
                problems.append(
                    (
                        f"setsession[{index}]",
                        "{tenant} must stand alone, outside quotes and comments (it becomes a "
                        "quoted identifier; {tenant_literal} a quoted string); use search_path "
                        "for schema names built from the key",
                    )
                )
        problems += self._identifier_problems_at_load()
        if self.search_path and self.server_pooling == "transaction":
            problems.append(
                (
                    "search_path",
                    "becomes SET search_path TO ... after every open: session state, which a "
                    "transaction pooler gives to another tenant's client with the server "
                    "connection; give each tenant a role (ALTER ROLE ... SET search_path) or "
                    "a database of its own, or connect directly or through a session pooler",
                )
            )
        context = info.context if isinstance(info.context, dict) else {}
        sink = context.get("problems")
        if problems and isinstance(sink, list):
            sink.extend(problems)  # the loader reports them with paths and sources
        elif problems:
            raise _fail("placeholder", "; ".join(f"{key}: {msg}" for key, msg in problems))
        return self

    def _identifiers(self, key: str, data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """``(field, name)`` for every identifier that ``key`` becomes part of.

        PostgreSQL cuts names (databases, roles, schemas) at 63 bytes, so those are what must
        fit: ``dbname``, ``user`` and each ``search_path`` entry whole; in ``options`` each
        comma-separated part of a ``-c`` value; in ``setsession`` the quoted key itself.
        """
        # application_name is cut at 63 bytes too, but it names nothing on the server: two
        # tenants sharing one share no data, so it is left to display as PostgreSQL cuts it.
        for name in ("dbname", "user"):
            value = data.get(name)
            if isinstance(value, str) and TENANT in value:
                yield name, value.replace(TENANT, key)
        for schema in self.search_path:
            if TENANT in schema:
                yield "search_path", schema.replace(TENANT, key)
        options = data.get("options")
        if isinstance(options, str) and TENANT in options:
            for word in options.split():
                if TENANT in word:
                    value = word.partition("=")[2] if "=" in word else word
                    for part in value.split(","):
                        if TENANT in part:
                            yield "options", part.strip().strip('"').replace(TENANT, key)
        setsession = data.get("setsession") or ()
        if any(TENANT in statement for statement in setsession):
            yield "setsession", key

    def _identifier_problems_at_load(self) -> list[tuple[str, str]]:
        # The longest key the template accepts, assumed ASCII (the default pattern is): a
        # pattern that allows wider characters is caught at lookup, key by key.
        longest = "x" * self.tenant_max_length
        data = {name: getattr(self, name) for name in ("dbname", "user", "application_name")}
        data.update(options=self.options, setsession=self.setsession)
        problems: list[tuple[str, str]] = []
        for field, name in self._identifiers(longest, data):
            size = identifier_bytes(name)
            if size > NAMEDATALEN_MAX and not any(f == field for f, _ in problems):
                fits = self.tenant_max_length - (size - NAMEDATALEN_MAX)
                problems.append(
                    (
                        field,
                        f"with a tenant key of tenant_max_length ({self.tenant_max_length}) "
                        f"characters this identifier is {size} bytes; PostgreSQL cuts names "
                        f"at {NAMEDATALEN_MAX} bytes, so two tenants could share one; lower "
                        f"tenant_max_length to {max(fits, 0)} or shorten the template",
                    )
                )
        return problems

    def _check_identifiers(self, key: str, data: Mapping[str, Any]) -> None:
        for field, name in self._identifiers(key, data):
            size = identifier_bytes(name)
            if size > NAMEDATALEN_MAX:
                raise InvalidTenantError(
                    f"tenant template {self.name!r}: a tenant key of {len(key)} characters "
                    f"makes a {size}-byte identifier in {field}; PostgreSQL cuts names at "
                    f"{NAMEDATALEN_MAX} bytes (UTF-8), so two tenants could share one; use a "
                    "shorter key"
                )

    def check_tenant(self, key: object) -> str:
        """Return ``key`` if it is an acceptable tenant key, else raise InvalidTenantError.

        Checked before anything touches the network: a string matching ``tenant_pattern`` as
        a whole, at most ``tenant_max_length`` characters, without NUL, and short enough
        that no identifier built from it passes PostgreSQL's 63 bytes.
        """
        if (
            not isinstance(key, str)
            or len(key) > self.tenant_max_length
            or "\x00" in key
            or re.fullmatch(self.tenant_pattern, key) is None
        ):
            if isinstance(key, str):
                shown = repr(key) if len(key) <= 40 else f"{key[:37]!r}... ({len(key)} characters)"
            else:  # never the whole of it: it may be huge
                shown = f"of type {type(key).__name__}, not str"
            raise InvalidTenantError(
                f"tenant template {self.name!r}: invalid tenant key {shown}; a key must match "
                f"{self.tenant_pattern} and have at most {self.tenant_max_length} characters"
            )
        data = {name: getattr(self, name) for name in ("dbname", "user", "application_name")}
        data.update(options=self.options, setsession=self.setsession)
        data.update(self.overrides.get(key, {}))
        self._check_identifiers(key, data)
        return key

    def for_tenant(self, key: str) -> PoolSettings:
        """The settings of ``key``'s pool: placeholders substituted, overrides applied.

        The key is checked first (:meth:`check_tenant`). In libpq values (``dbname``,
        ``user``, ``application_name``) it is inserted as is, and the whole value is quoted
        when the connection string is built; in ``options`` white space and backslashes are
        escaped; in SQL, ``{tenant}`` becomes a quoted identifier and ``{tenant_literal}`` a
        quoted string; each ``search_path`` entry becomes one quoted identifier.
        """
        self.check_tenant(key)
        data = {name: getattr(self, name) for name in PoolSettings.model_fields}
        # Overrides first: their values get the same substitution, and an overridden
        # setsession still runs after the search_path (the tenant's isolation).
        data.update(self.overrides.get(key, {}))
        for name in ("dbname", "user", "application_name"):
            if isinstance(data[name], str):
                data[name] = data[name].replace(TENANT, key)
        if isinstance(data["options"], str):
            data["options"] = data["options"].replace(TENANT, escape_option(key))
        statements = []
        if self.search_path:
            schemas = ", ".join(quote_ident(s.replace(TENANT, key)) for s in self.search_path)
            statements.append(f"SET search_path TO {schemas}")
        ident, literal = quote_ident(key), quote_literal(key)

        def quoted(match: re.Match[str]) -> str:
            return literal if match.group() == TENANT_LITERAL else ident

        # One pass: a key that itself holds "{tenant}" is never substituted again.
        statements += [PLACEHOLDER.sub(quoted, statement) for statement in data["setsession"]]
        data["setsession"] = tuple(statements)
        return PoolSettings.model_construct(**data)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["search_path"] = list(self.search_path)
        out["overrides"] = {
            key: {k: (MASK if k in _SECRET_FIELDS else v) for k, v in table.items()}
            for key, table in self.overrides.items()
        }
        return out
