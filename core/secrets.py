"""Keeping secrets out of URLs shown to people and out of log records.

A password written into a URL unencoded may hold ``/``, ``?``, ``#``, ``@`` or ``:``, which
end a standard parser's netloc early and scatter the password into the host, path or
query. Here the credentials of ``scheme://credentials@host...`` are everything between
``//`` and the *last* ``@`` whose tail still looks like a host, so the password is found
whatever it contains (percent-encode an ``@`` anywhere else in a URL with credentials).

:class:`SecretFilter` scrubs known secrets from log records of libraries that print them
(aiokafka's DEBUG log shows SASL PLAIN credentials); :func:`guard_loggers` installs one.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

__all__ = ["SecretFilter", "guard_loggers", "quote_userinfo", "scrub", "split_userinfo"]

MASK = "***"

_HOST_TAIL = re.compile(r"[^@/?#\s]*(?:[/?#]|$)")
"""What follows the credentials: a host (list), maybe a port, then the end or /, ? or #."""
_USERINFO_SAFE = "%!$&'()*+,;=:~"
"""Characters left as they are when quoting credentials (RFC 3986 userinfo, and ``%`` so
that what is percent-encoded already stays so)."""


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, credentials or None, rest)`` of ``url``: the credentials are the text
    between ``//`` and the last ``@`` followed by something host-like."""
    head, sep, rest = url.partition("//")
    if not sep:
        return url, None, ""
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) >= 0:
        if _HOST_TAIL.match(rest, at + 1):
            return head + sep, rest[:at], rest[at + 1 :]
    return head + sep, None, rest


def quote_userinfo(url: str) -> str:
    """``url`` with its credentials percent-encoded, so that a standard parser (``urlsplit``)
    finds the user and password the writer meant. Unchanged when they are encoded already."""
    head, userinfo, rest = split_userinfo(url)
    if userinfo is None:
        return url
    user, colon, password = userinfo.partition(":")
    quoted = quote(user, safe=_USERINFO_SAFE.replace(":", ""))
    if colon:
        quoted += ":" + quote(password, safe=_USERINFO_SAFE)
    return f"{head}{quoted}@{rest}"


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` shows in text: as is, escaped in a str or bytes repr (either
    quote style), percent-encoded."""
    data = secret.encode("utf-8", "surrogatepass")
    forms = {
        secret,
        repr(secret)[1:-1],
        repr(secret + '"')[1:-2],
        repr(data)[2:-1],
        repr(data + b'"')[2:-2],
        quote(secret, safe=""),
        quote(secret, safe=_USERINFO_SAFE),
    }
    return {form for form in forms if form}


def scrub(text: str, secrets: set[str] | frozenset[str] | list[str]) -> str:
    """``text`` with every form of every secret replaced by ``***``, longest first."""
    forms = sorted({form for secret in secrets if secret for form in _forms(secret)}, key=len)
    for form in reversed(forms):
        text = text.replace(form, MASK)
    return text


class SecretFilter(logging.Filter):
    """Scrubs the registered secrets from each record's message and traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets
        if not secrets:
            return True
        message = record.getMessage()
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, secrets)
        return True


_FILTERS: dict[str, SecretFilter] = {}


def guard_loggers(prefix: str, *secrets: str | None) -> None:
    """Keep ``secrets`` out of what the loggers named ``prefix`` and ``prefix.*`` record.

    A filter works only on the logger it is added to, so it is added to each of those that
    exist now (a library creates its loggers when its modules are imported: call this after
    importing it)."""
    found = {secret for secret in secrets if secret}
    if not found:
        return
    guard = _FILTERS.get(prefix)
    if guard is None:
        guard = _FILTERS[prefix] = SecretFilter()
    guard.secrets |= found
    names = [prefix] + [
        name for name in list(logging.Logger.manager.loggerDict) if name.startswith(prefix + ".")
    ]
    for name in names:
        logger = logging.getLogger(name)
        if guard not in logger.filters:
            logger.addFilter(guard)
