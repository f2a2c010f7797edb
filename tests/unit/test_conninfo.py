"""libpq connection strings: quoting, building, parsing (keyword and URI forms), redaction.

Where the machine's libpq can be loaded (ctypes, ``PQconninfoParse``), the parser is checked
against libpq itself; no server is needed for that.
"""

from __future__ import annotations

import pytest
from _helpers import CONNINFO_CHARS, LIBPQ, libpq_keywords, libpq_parse, needs_libpq
from hypothesis import given, settings
from hypothesis import strategies as st

from pgregistry.conninfo import (
    LIBPQ_KEYWORDS,
    MASK,
    SECRET_KEYWORDS,
    ConninfoError,
    build_conninfo,
    is_conninfo,
    is_uri,
    mask_conninfo,
    parse_conninfo,
    parse_keyword_conninfo,
    parse_uri,
    quote_value,
    redact,
)

# -- quoting and building ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("", "''"),
        ("two words", "'two words'"),
        ("it's", r"'it\'s'"),
        ("back\\slash", r"'back\\slash'"),
        ("tab\there", "'tab\there'"),
        ("a=b", "a=b"),
        ("p@ss:w/d?x#", "p@ss:w/d?x#"),
    ],
)
def test_quote_value_quotes_only_what_libpq_needs(value: str, expected: str) -> None:
    assert quote_value(value) == expected


def test_quote_value_refuses_nul() -> None:
    with pytest.raises(ConninfoError, match="NUL"):
        quote_value("a\x00b")


def test_build_conninfo_skips_none_and_writes_numbers_and_flags() -> None:
    text = build_conninfo({"host": "db", "port": 5432, "keepalives": True, "user": None})
    assert text == "host=db port=5432 keepalives=1"


def test_build_conninfo_refuses_unknown_keyword() -> None:
    with pytest.raises(ConninfoError, match='unknown libpq keyword "hots"'):
        build_conninfo({"hots": "db"})


def test_build_conninfo_value_cannot_inject_a_keyword() -> None:
    text = build_conninfo({"dbname": "x password=stolen", "user": "u' host='evil"})
    assert parse_conninfo(text) == {"dbname": "x password=stolen", "user": "u' host='evil"}


# -- parsing -------------------------------------------------------------------------------


def test_parse_keyword_string_like_libpq() -> None:
    text = r"host=a port = 5 dbname='x y' password='it\'s' user=a\ b application_name="
    assert parse_keyword_conninfo(text) == {
        "host": "a",
        "port": "5",
        "dbname": "x y",
        "password": "it's",
        "user": "a b",
        "application_name": "",
    }


def test_parse_keyword_string_later_value_wins() -> None:
    assert parse_conninfo("host=a host=b") == {"host": "b"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host", 'missing "="'),
        ("host='open", "unterminated quoted value"),
        ("hots=db", 'unknown libpq keyword "hots"'),
    ],
)
def test_parse_keyword_string_errors(text: str, message: str) -> None:
    with pytest.raises(ConninfoError, match=message):
        parse_conninfo(text)


def test_parse_error_never_repeats_a_value() -> None:
    with pytest.raises(ConninfoError) as info:
        parse_conninfo("host=db mysecretpassword")
    assert "mysecretpassword" not in str(info.value)


def test_parse_uri_full() -> None:
    uri = (
        "postgresql://u%40x:p%40ss:w@h1:1,h2,[::1]:3/db%2F1?sslmode=require&application_name=a%20b"
    )
    assert parse_uri(uri) == {
        "user": "u@x",
        "password": "p@ss:w",
        "host": "h1,h2,::1",
        "port": "1,,3",
        "dbname": "db/1",
        "sslmode": "require",
        "application_name": "a b",
    }


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://", {}),
        ("postgres://h", {"host": "h"}),
        ("postgresql://:pw@h/", {"password": "pw", "host": "h"}),
        ("postgresql:///db?host=%2Fvar%2Frun", {"dbname": "db", "host": "/var/run"}),
        ("postgresql://h?ssl=true", {"host": "h", "sslmode": "require"}),
        ("postgresql://a,b/db", {"host": "a,b", "port": ",", "dbname": "db"}),
    ],
)
def test_parse_uri_cases(uri: str, expected: dict[str, str]) -> None:
    assert parse_conninfo(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://h?x=1",
        "postgresql://h?sslmode",
        "postgresql://h?a=b=c",
        "postgresql://[::1",
        "postgresql://[]/db",
        "postgresql://[::1]x/db",
        "postgresql://h/%zz",
        "postgresql://h/a%00b",
    ],
)
def test_parse_uri_errors(uri: str) -> None:
    with pytest.raises(ConninfoError):
        parse_conninfo(uri)


def test_is_uri_and_is_conninfo() -> None:
    assert is_uri("postgresql://x") and is_uri("postgres://x") and not is_uri("mydb")
    assert is_conninfo("host=x") and is_conninfo("postgres://x")
    assert not is_conninfo("mydb") and not is_conninfo("my db")


def test_libpq_keyword_list_covers_the_installed_libpq() -> None:
    if LIBPQ is None:
        pytest.skip("libpq cannot be loaded with ctypes")
    missing = libpq_keywords() - set(LIBPQ_KEYWORDS)
    assert not missing, f"add to LIBPQ_KEYWORDS: {sorted(missing)}"


@needs_libpq
@pytest.mark.parametrize(
    "text",
    [
        r"host=a port = 5 dbname='x y' password='it\'s' user=a\ b",
        "host='x'port=1",
        "host= x",
        "postgresql://u:p%40ss@h1:1,h2,[::1]:3/db?sslmode=require&ssl=true",
        "postgresql://a,b/db",
        "postgresql://u:a:b@h",
        "postgresql://h:5432:1/x",
        "postgresql://h?x=1",
        "host='abc",
    ],
)
def test_parser_agrees_with_libpq(text: str) -> None:
    try:
        ours: dict[str, str] | None = parse_conninfo(text)
    except ConninfoError:
        ours = None
    assert ours == libpq_parse(text)


# -- round trips -------------------------------------------------------------------------------

_NICE_KEYWORDS = [k for k in LIBPQ_KEYWORDS if k != "dbname"]  # dbname=... may expand
_values = st.text(alphabet=CONNINFO_CHARS, max_size=20)
_params = st.dictionaries(st.sampled_from(_NICE_KEYWORDS), _values, max_size=6)


@settings(max_examples=100, deadline=None)
@given(_params)
def test_build_then_parse_round_trips(params: dict[str, str]) -> None:
    assert parse_conninfo(build_conninfo(params)) == params


@needs_libpq
@settings(max_examples=100, deadline=None)
@given(_params)
def test_built_string_reads_the_same_in_libpq(params: dict[str, str]) -> None:
    known = libpq_keywords()
    params = {k: v for k, v in params.items() if k in known}
    assert libpq_parse(build_conninfo(params)) == params


_uri_text = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs"], blacklist_characters="\x00%"
    ),  # raw % is an encoding error
    max_size=15,
)


@needs_libpq
@settings(max_examples=100, deadline=None)
@given(_uri_text.map(lambda t: "postgresql://" + t))
def test_uri_parser_agrees_with_libpq_on_any_uri(uri: str) -> None:
    try:
        ours: dict[str, str] | None = parse_conninfo(uri)
    except ConninfoError:
        ours = None
    if "\x00" in uri:
        return
    authority = uri[len("postgresql://") :].split("/")[0].split("?")[0].split("#")[0]
    path = uri[len("postgresql://") :].partition("/")[2].split("?")[0].split("#")[0]
    if ours is None and (authority.count("@") > 1 or ("@" not in authority and "@" in path)):
        # Refused on purpose where libpq reads it: an authority with more than one "@", or an
        # "@" after the first "/", is ambiguous (a password's "@" or "/" would show its pieces
        # as host, port or database; #11 item 12).
        return
    assert ours == libpq_parse(uri)


# -- masking and redaction -------------------------------------------------------------------


def test_mask_conninfo_keyword_string() -> None:
    masked = mask_conninfo("host=db password='s e c' sslpassword=k user=u")
    assert masked == f"host=db password={MASK} sslpassword={MASK} user=u"


def test_mask_conninfo_uri_comes_back_in_keyword_form() -> None:
    masked = mask_conninfo("postgresql://u:secret@db/app?sslpassword=k2")
    assert "secret" not in masked and "k2" not in masked
    assert parse_conninfo(masked) == {
        "user": "u",
        "password": MASK,
        "host": "db",
        "dbname": "app",
        "sslpassword": MASK,
    }


def test_mask_conninfo_unparsable_is_masked_whole() -> None:
    assert mask_conninfo("host=db password='unterminated") == MASK


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("host=db password=hunter2 user=x", "hunter2"),
        ("host=db password = 'two words' user=x", "two words"),
        (r"host=db password='it\'s here' user=x", "it\\'s here"),
        (r"password=esc\ aped user=x", "esc\\ aped"),
        ("sslpassword=keypw host=db", "keypw"),
        ("connect failed: postgresql://app:hunter2@db:5432/app", "hunter2"),
        ("postgres://:hunter2@db/app", "hunter2"),
        ("postgresql://db/app?sslmode=require&password=hunter2&user=x", "hunter2"),
        ("{'password': 'hunter2', 'user': 'x'}", "hunter2"),
    ],
)
def test_redact_masks_passwords(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


def test_redact_keeps_the_rest() -> None:
    assert redact("host=db password=x user=app") == f"host=db password={MASK} user=app"
    assert redact("postgresql://app:pw@db/x") == f"postgresql://app:{MASK}@db/x"


def test_redact_literal_secrets() -> None:
    assert redact("login failed for s3cr3t!", ["s3cr3t!", None, ""]) == f"login failed for {MASK}"


def test_secret_keywords_are_libpq_keywords() -> None:
    assert set(SECRET_KEYWORDS) <= set(LIBPQ_KEYWORDS)


@pytest.mark.parametrize(
    "uri",
    ["postgresql://u:p@ss@127.0.0.1:5/db", "postgres://u:a@b@c@h?sslmode=disable"],
)
def test_redact_masks_a_uri_password_up_to_the_last_at(uri: str) -> None:
    password = uri.split("//", 1)[1].split(":", 1)[1].rsplit("@", 1)[0]
    masked = redact(uri)
    assert password not in masked and password.split("@")[-1] + "@" not in masked
    assert masked.startswith(uri.split(":", 2)[0] + "://u:")
