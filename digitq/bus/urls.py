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

A password is a URL's userinfo: the characters that end or split a URL's parts must be
percent-encoded in it (:data:`SPECIAL`). Written raw, kombu and redis-py read another password
(and the rest as a host, a path or a second URL), so :func:`normalise` refuses such a URL
with one line of advice, before anything runs; :func:`redact` never shows any of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from digitq.errors import ConfigError

SENTINEL_SCHEMES = ("sentinel", "sentinels")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
SENTINEL_PORT = 26379
_CREDENTIALS = ("password", "username")
_HIDDEN = "***"
#: What each character that kombu or redis-py (through urllib) reads as part of a URL's structure is written as in
#: a password: ';' starts another URL for kombu (its list of fail-over URLs, Sentinel's form); '/', '?' and '#' end
#: the host part; '[' and ']' are an IPv6 address; '%' starts an escape (a raw '%41' is read as 'A', which no check
#: can tell); '@' ends the userinfo (the last one does: a raw one works, encoded it is never wrong); '&' ends a
#: ``?password=`` value. Every other character (spaces, ':', quotes, non-ASCII...) may stay.
SPECIAL = {";": "%3B", "/": "%2F", "?": "%3F", "#": "%23", "[": "%5B", "]": "%5D", "%": "%25", "@": "%40", "&": "%26"}
#: The one line of advice every refusal of a URL ends with.
ENCODE_ADVICE = ("percent-encode these characters in a password: " +
                 ", ".join(f"{c} as {e}" for c, e in SPECIAL.items()) +
                 ", and control characters (tab, newline) likewise (%09, %0A), e.g. in Python "
                 "urllib.parse.quote(password, safe='')")
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_PASSWORD = re.compile(r"[?&;]password=", re.IGNORECASE)
_OPTION = re.compile(r"[a-z_][a-z0-9_]*=.*", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What may show of a part after its userinfo: a host (or [IPv6]), a numeric port, a path, a query.
_SHOWABLE = re.compile(r"(\[[0-9A-Fa-f:.]*\]|[^\s:/?#@\[\];&=%]*)(:\d*)?(/[^?#;@]*)?(\?[^#;@]*)?")


def normalise(url: str) -> str:
    """``url`` with ``?password=``/``?username=`` moved into the userinfo (the query's win, as in redis-py).

    A Sentinel URL comes back with the password and database in every part: kombu reads
    them from whichever part it is on when it fails over to the next one.
    A :class:`ConfigError` for a URL no client here would take."""
    scheme = url.partition("://")[0]
    if scheme not in SCHEMES:
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has scheme {scheme!r}; use one of "
                          f"{', '.join(s + '://' for s in SCHEMES)}")
    if _CONTROL.search(url):  # urllib drops tabs and newlines: a password with one would be another password
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has a control character (a tab, a newline); "
                          + ENCODE_ADVICE)
    if scheme in SENTINEL_SCHEMES:
        return parse_sentinel(url).url
    if ";" in (url if scheme == "unix" else url.partition("?")[0]):
        # kombu splits a URL at every ';' into fail-over URLs before it parses any: the password would end there.
        # (One in a ?password= value is fine: it travels percent-encoded in the userinfo, but for unix://.)
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has a ';', which kombu reads as the start of another "
                          f"URL (a ';' in the password?); {ENCODE_ADVICE}")
    return _normalise_one(url)


def _normalise_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:  # its text may quote part of a password: not shown
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} is not a valid URL; e.g. redis://:PASSWORD@host:6379/0; "
                          + ENCODE_ADVICE) from e
    if parts.scheme != "unix" and "@" in url.partition("://")[2][len(parts.netloc):]:
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has an '@' the URL parser does not see as the end of "
                          f"the password (a '/', '?' or '#' in it?); {ENCODE_ADVICE}")
    if parts.fragment or url.endswith("#"):
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has a '#', which ends what kombu and redis-py read "
                          f"(a '#' in ?password=...?); {ENCODE_ADVICE}")
    if parts.query and not all(_OPTION.fullmatch(pair) for pair in parts.query.split("&")):
        # Every option of redis-py and kombu is a lower-case name: anything else after an '&' is a piece of a value
        # that an '&' cut (``password=a&b=c`` cannot be told from an option ``b``; the advice covers it).
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r} has a query part that is not name=value (an '&' in "
                          f"?password=...?); {ENCODE_ADVICE}")
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
    advice = ("e.g. sentinel://:PASSWORD@host1:26379/0;sentinel://host2:26379;sentinel://host3:26379; "
              + ENCODE_ADVICE)
    parts = [p.strip() for p in url.split(";") if p.strip()]
    schemes = {p.partition("://")[0] for p in parts}
    if not parts or len(schemes) != 1 or not schemes <= set(SENTINEL_SCHEMES):
        raise ConfigError(f"DIGITQ_REDIS_URL {redact(url)!r}: every ';'-separated part of a Sentinel URL must "
                          f"start with the same sentinel:// (or sentinels:// for TLS); a ';' in the password splits "
                          f"it too: {advice}")
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
                              f"number; {advice}")
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
    """``url`` with every credential replaced by ``***``, whatever characters it holds.

    Everything after a ``password=`` in a query is hidden (an ``&``, ``#`` or ``;`` in the value cannot make a
    piece of it show), and in each part (Sentinel's ``;``-separated form) everything up to the part's last ``@``
    (the userinfo, however a parser would end it: a raw ``/``, ``?``, ``#`` or ``@`` in a password cannot either),
    but a plain user name before a ``:``. Where the parts' userinfos differ, a ``;`` in a password may have cut it
    into two parts: then everything up to the URL's last ``@`` is hidden. What is left must read as hosts, ports and
    paths, or it is hidden too."""
    scheme = _SCHEME.match(url)
    if not scheme:
        return _HIDDEN
    if url[:scheme.end()].strip().partition("://")[0] not in SENTINEL_SCHEMES:
        return _redact_part(url)  # kombu would split at a ';', but the whole is one URL's text to hide in
    url, _ = _cut_query_password(url, scheme.end())  # each part below shows its own "password=***"
    if url is None:
        return _head(scheme) + _HIDDEN
    # Only a ';' that starts another sentinel's part splits.
    parts = re.split(r";(?=\s*sentinels?://)", url)
    if len({_userinfo(part) for part in parts}) > 1:
        head, _, after = url.rpartition("@")
        if head:
            shown = re.split(r";(?=\s*sentinels?://)", after)
            parts = [_head(scheme) + _HIDDEN + "@" + shown[0]] + shown[1:]
            return ";".join(_redact_part(part) if i else _redact_part(part, hidden=True)
                            for i, part in enumerate(parts))
    return ";".join(_redact_part(part) for part in parts)


def _head(scheme: re.Match) -> str:
    return scheme.string[:scheme.end()]


def _cut_query_password(url: str, start: int) -> tuple[str | None, str]:
    """``url`` up to the end of its first ``password=`` (everything after it is the value, or may be), and the
    hidden tail; None when an '@' follows it: then which is the userinfo and which the value cannot be told."""
    query = _QUERY_PASSWORD.search(url, start)
    if not query:
        return url, ""
    if "@" in url[query.end():]:
        return None, _HIDDEN
    return url[:query.end()], _HIDDEN


def _userinfo(part: str) -> str | None:
    rest = part.partition("://")[2]
    return rest.rpartition("@")[0] if "@" in rest else None


def _redact_part(url: str, hidden: bool = False) -> str:
    """One part: its userinfo hidden (``hidden``: it is already), what follows shown only if it reads as a host."""
    scheme = _SCHEME.match(url)
    if not scheme:
        return _HIDDEN
    head = url[:scheme.end()]
    unix = head.strip().startswith("unix")
    cut, tail = _cut_query_password(url, scheme.end())
    if cut is None:
        return head + _HIDDEN
    rest = cut[scheme.end():]
    shown_userinfo = ""
    if "@" in rest and not (unix and rest.startswith("/")):  # unix:///path@x.sock: an '@' in a socket's path
        userinfo, _, rest = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if hidden:
            shown_userinfo = userinfo + "@"
        elif colon and re.fullmatch(r"[A-Za-z0-9._~+-]*", user):
            shown_userinfo = f"{user}:{_HIDDEN}@"
        else:
            shown_userinfo = f"{_HIDDEN}@"
    showable = _SHOWABLE.fullmatch(rest)
    # A host is needed but for unix:// (a port alone may be a piece of a password that a ';' cut off).
    if not showable or (not unix and not showable.group(1) and rest):
        return head + _HIDDEN
    return head + shown_userinfo + rest + tail
