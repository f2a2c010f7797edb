"""Reset and ping policies: every accepted spelling, and errors that name the knob."""

from __future__ import annotations

import pytest

from pgregistry.policies import PingPolicy, ResetPolicy, parse_ping, parse_reset


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ResetPolicy.ROLLBACK_IF_NEEDED),
        (False, ResetPolicy.ROLLBACK_IF_NEEDED),
        (True, ResetPolicy.ROLLBACK),
        (0, ResetPolicy.ROLLBACK_IF_NEEDED),
        (1, ResetPolicy.ROLLBACK),
        (2, ResetPolicy.RECONNECT),
        ("0", ResetPolicy.ROLLBACK_IF_NEEDED),
        ("2", ResetPolicy.RECONNECT),
        ("rollback_if_needed", ResetPolicy.ROLLBACK_IF_NEEDED),
        ("rollback-if-needed", ResetPolicy.ROLLBACK_IF_NEEDED),
        ("rollback", ResetPolicy.ROLLBACK),
        (" Reconnect ", ResetPolicy.RECONNECT),
        ("DISCARD", ResetPolicy.DISCARD),
        (ResetPolicy.DISCARD, ResetPolicy.DISCARD),
    ],
)
def test_reset_accepts_the_original_ints_and_names(value: object, expected: ResetPolicy) -> None:
    assert parse_reset(value) is expected


@pytest.mark.parametrize(
    "value", [3, -1, "4", "", "rollback_always", "discard all", 1.0, b"rollback", []]
)
def test_reset_rejects_unknown_values_naming_the_parameter_and_choices(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_reset(value)
    message = str(caught.value)
    assert message.startswith("reset:")
    assert "'discard'" in message and "0, 1, 2" in message


def test_reset_error_names_the_given_parameter() -> None:
    with pytest.raises(ValueError, match=r"^pools\.billing\.reset:"):
        parse_reset("nope", name="pools.billing.reset")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("never", PingPolicy.NEVER),
        ("idle", PingPolicy.IDLE),
        (" ALWAYS ", PingPolicy.ALWAYS),
        (PingPolicy.IDLE, PingPolicy.IDLE),
    ],
)
def test_ping_accepts_its_names(value: object, expected: PingPolicy) -> None:
    assert parse_ping(value) is expected


@pytest.mark.parametrize("value", [None, True, 0, 1, "sometimes", ""])
def test_ping_rejects_unknown_values_naming_the_parameter_and_choices(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_ping(value)
    message = str(caught.value)
    assert message.startswith("ping:")
    assert "'never', 'idle', 'always'" in message


def test_ping_error_names_the_given_parameter() -> None:
    with pytest.raises(ValueError, match=r"^pools\.x\.ping:"):
        parse_ping("often", name="pools.x.ping")
