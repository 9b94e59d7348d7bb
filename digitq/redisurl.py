"""Redis URLs: one canonical form for every client, and a redacted form for every message.

redis-py accepts a password in the userinfo (``redis://:PASSWORD@host``,
``redis://USER:PASSWORD@host``) or in the query (``?password=...``, with
``username=...``); kombu, under Celery, accepts only the userinfo and fails with a
``TypeError`` on the query form. :func:`normalise` moves query credentials into the
userinfo, so the broker and digitq's own client read the same URL the same way.

A Redis behind Sentinel is named by its sentinels, in kombu's form
``sentinel://[:PASSWORD@]HOST:PORT[/DB];sentinel://HOST:PORT...`` (``sentinels://``
for TLS, digitq's spelling: kombu is told ``sentinel://`` and its TLS options).
The password is the master's (and its replicas'), not the sentinels'.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from digitq.errors import ConfigError

SENTINEL_SCHEMES = ("sentinel", "sentinels")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
SENTINEL_PORT = 26379
_CREDENTIALS = ("password", "username")
_HIDDEN = "***"


def normalise(url: str) -> str:
    """``url`` with ``?password=``/``?username=`` moved into the userinfo (the query's win, as in redis-py).

    A Sentinel URL comes back with the password and database in every part: kombu reads
    them from whichever part it is on when it fails over to the next one.
    A :class:`ConfigError` for a URL no client here would take."""
    scheme = url.partition("://")[0]
    if scheme not in SCHEMES:
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has scheme {scheme!r}; use one of "
                          f"{', '.join(s + '://' for s in SCHEMES)}")
    if scheme in SENTINEL_SCHEMES:
        return parse_sentinel(url).url
    return _normalise_one(url)


def _normalise_one(url: str) -> str:
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


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names its Redis through Sentinel."""
    return url.partition("://")[0] in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelURL:
    """A Sentinel URL, parsed: where the sentinels are and how to talk to the master they name."""

    sentinels: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int
    tls: bool

    @property
    def url(self) -> str:
        """The canonical form: every part with the credentials and the database (see :func:`normalise`)."""
        scheme = "sentinels" if self.tls else "sentinel"
        user = quote(self.username, safe="") if self.username else ""
        auth = f"{user}:{quote(self.password, safe='')}@" if self.password is not None else (
            f"{user}@" if user else "")
        return ";".join(f"{scheme}://{auth}{_host(h)}:{p}/{self.db}" for h, p in self.sentinels)

    @property
    def kombu_url(self) -> str:
        """What kombu's ``sentinel://`` transport takes (TLS goes to it as ``broker_use_ssl``)."""
        return self.url.replace("sentinels://", "sentinel://") if self.tls else self.url


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_sentinel(url: str) -> SentinelURL:
    """The parts of a ``sentinel://`` (or ``sentinels://``) URL, ``;``-separated, one per sentinel.

    The password (and user, and database) may be given in any part, or in all alike; kombu
    applies it to the master and replicas. A :class:`ConfigError` says what to fix."""
    advice = ("e.g. sentinel://:PASSWORD@host1:26379/0;sentinel://host2:26379;sentinel://host3:26379 "
              "(percent-encode '#', '?', '/', '@' and ';' in a password)")
    parts = [p.strip() for p in url.split(";") if p.strip()]
    schemes = {p.partition("://")[0] for p in parts}
    if not parts or len(schemes) != 1 or not schemes <= set(SENTINEL_SCHEMES):
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r}: every ';'-separated part of a Sentinel URL must "
                          f"start with the same sentinel:// (or sentinels:// for TLS); {advice}")
    sentinels, users, passwords, dbs = [], set(), set(), set()
    for part in parts:
        parts_of = urlsplit(_normalise_one(part))
        try:
            host, port = parts_of.hostname, parts_of.port or SENTINEL_PORT
        except ValueError as e:
            raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has a part that is not host:port; {advice}") from e
        if not host:
            raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has a part without a sentinel's host; {advice}")
        if parts_of.query or parts_of.fragment:
            raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r}: a Sentinel URL takes no query options (TLS "
                              "files come from DIGITQ_REDIS_CA, DIGITQ_REDIS_CERT, DIGITQ_REDIS_KEY); " + advice)
        db = parts_of.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r}: the database after a sentinel's port must be a "
                              f"number, not {db!r}; {advice}")
        sentinels.append((host, port))
        if parts_of.username:
            users.add(unquote(parts_of.username))
        if parts_of.password is not None:
            passwords.add(unquote(parts_of.password))
        if db:
            dbs.add(int(db))
    for what, given in (("passwords", passwords), ("users", users), ("databases", dbs)):
        if len(given) > 1:
            raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} gives different {what} in its parts: there is one "
                              f"master, give its {what[:-1]} once (in the first part) or the same in every part")
    return SentinelURL(tuple(sentinels), next(iter(users), None), next(iter(passwords), None),
                       next(iter(dbs), 0), schemes == {"sentinels"})


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
