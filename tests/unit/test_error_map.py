"""polybus.errors.ErrorMap: the one shape of every adapter's error mapping."""

from __future__ import annotations

import pytest

from polybus.errors import ConfigError, ErrorMap, ProtocolError, TransportError


class LibraryError(Exception):
    pass


class TooLarge(LibraryError):
    pass


ERRORS = ErrorMap(
    (TooLarge, ProtocolError, "over the limit"),
    ((LibraryError, OSError), TransportError, None),
)


def test_first_listed_match_wins_and_says_what_was_done() -> None:
    with pytest.raises(ProtocolError) as info, ERRORS("publish to %r", "orders"):
        raise TooLarge("1 MiB")
    assert str(info.value) == "publish to 'orders': over the limit"
    assert isinstance(info.value.__cause__, TooLarge)
    with pytest.raises(TransportError) as raised, ERRORS("connect"):
        raise LibraryError("refused")
    assert str(raised.value) == "connect: LibraryError: refused"
    assert isinstance(raised.value.__cause__, LibraryError)


def test_polybus_errors_and_unlisted_exceptions_pass_unchanged() -> None:
    original = ConfigError("bad subject")
    with pytest.raises(ConfigError) as info, ERRORS("subscribe"):
        raise original
    assert info.value is original
    with pytest.raises(KeyError), ERRORS("subscribe"):
        raise KeyError("not the library's")


def test_error_gives_the_mapped_error_without_raising() -> None:
    cause = OSError("reset")
    error = ERRORS.error(cause, "connection to %s lost", "h:1")
    assert isinstance(error, TransportError) and error.__cause__ is cause
    assert str(error) == "connection to h:1 lost: OSError: reset"
    assert isinstance(ERRORS.error(KeyError("x"), "read"), TransportError)  # unlisted
    already = TransportError("lost")
    assert ERRORS.error(already, "read") is already
    assert set(ERRORS.catches) == {TooLarge, LibraryError, OSError}


def test_what_is_formatted_only_on_failure() -> None:
    class Loud:
        def __repr__(self) -> str:
            raise AssertionError("formatted on the happy path")

    with ERRORS("publish to %r", Loud()):
        pass
