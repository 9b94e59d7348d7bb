"""Redis URLs: one canonical form for every client, and a redacted form for every message.

redis-py accepts a password in the userinfo (``redis://:PASSWORD@host``,
``redis://USER:PASSWORD@host``) or in the query (``?password=...``, with
``username=...``); kombu, under Celery, accepts only the userinfo and fails with a
``TypeError`` on the query form. :func:`normalise` moves query credentials into the
userinfo, so the broker and digitq's own client read the same URL the same way.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from digitq.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix")
_CREDENTIALS = ("password", "username")
_HIDDEN = "***"


def normalise(url: str) -> str:
    """``url`` with ``?password=``/``?username=`` moved into the userinfo (the query's win, as in redis-py).

    A :class:`ConfigError` for a URL no client here would take."""
    scheme = url.partition("://")[0]
    if scheme not in SCHEMES:
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has scheme {scheme!r}; use one of "
                          f"{', '.join(s + '://' for s in SCHEMES)}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:  # its text may quote part of a password: not shown
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} is not a valid URL; e.g. redis://:PASSWORD@host:6379/0 "
                          "(percent-encode '#', '?', '/' and '@' in a password: %23, %3F, %2F, %40)") from e
    if parts.scheme != "unix" and "@" in url.partition("://")[2] and "@" not in parts.netloc:
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has an '@' the URL parser does not see as the end of "
                          "the password: percent-encode '#', '?' and '/' in a password (%23, %3F, %2F)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = {k: v for k, v in query if k in _CREDENTIALS}
    if not given or parts.scheme == "unix":  # unix:// keeps redis-py's own query form (kombu does not take it)
        return url
    user = given.get("username", parts.username or "")
    password = given.get("password", parts.password)
    host = parts.netloc.rpartition("@")[2]
    userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
    rest = urlencode([(k, v) for k, v in query if k not in _CREDENTIALS])
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}", query=rest))


def redact(url: str) -> str:
    """``url`` with every credential replaced by ``***``: the userinfo's password, a user given without one
    (some clients take it for the password), and ``password=`` in the query; each part of a ``;``-separated
    list of URLs (Sentinel's form) alike. What cannot be parsed is hidden whole."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest and not rest.startswith("/"):  # unix:///path@x.sock: an '@' in a socket's path
        # Everything up to the last '@' is userinfo, wherever a parser would end the netloc: an unescaped
        # '#', '?' or '/' in a password moves it into the fragment, query or path of urlsplit's reading.
        userinfo, _, host = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        url = f"{scheme}://{user}:{_HIDDEN}@{host}" if colon and "/" not in user else f"{scheme}://{_HIDDEN}@{host}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return _HIDDEN
    out = url
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            query = "&".join(f"{k}={_HIDDEN}" if k == "password" else urlencode([(k, v)]) for k, v in pairs)
            out = out.replace("?" + parts.query, "?" + query, 1)
    return out
