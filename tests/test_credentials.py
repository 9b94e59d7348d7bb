"""Redis passwords in every form: never shown, whatever characters they hold; a URL that kombu or redis-py would
read another password from is refused with one line before anything is written; the same password percent-encoded
works end to end (a real redis-server with that password, a real worker)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from digitq.bus.urls import SPECIAL, normalise, parse_sentinel, redact
from digitq.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
#: Pieces of the generated passwords: each is found nowhere in the URL templates, so any of them in a redacted URL or
#: an error message is a piece of the password shown.
MARKERS = ["Qz7", "Xw9", "Kv4", "Jm2"]
#: Everything a URL parser might read as structure, and what it might not expect.
ODD = [*SPECIAL, ":", " ", "+", "=", "'", '"', "\\", "*", "!", "$", "(", ")", ",", "\t", "\n", "é", "€", "密",
       "://", "sentinel://", "password=", "%3B", "%41"]
FORMS = [
    "redis://:{pw}@127.0.0.1:6379/0",
    "redis://alice:{pw}@redis.example:6380/2",
    "rediss://:{pw}@redis.example/0?ssl_cert_reqs=required",
    "redis://127.0.0.1:6379/0?password={pw}",
    "redis://127.0.0.1:6379/0?db=1&password={pw}&socket_timeout=5",
    "redis://bob@127.0.0.1:6379/0?password={pw}",
    "unix://:{pw}@/run/redis.sock?db=0",
    "sentinel://:{pw}@s1:26379/0;sentinel://s2:26380;sentinel://s3",
    "sentinel://:{pw}@s1:26379/0;sentinel://:{pw}@s2:26380/0;sentinel://:{pw}@s3:26379/0",
    "sentinel://s1:26379;sentinel://:{pw}@s2:26380",
    "sentinels://carol:{pw}@s1:26379/0;sentinels://s2:26380/0",
    "sentinel://s1:26379?password={pw};sentinel://s2",
]


def _passwords(n: int = 300, seed: int = 20) -> list[str]:
    """Passwords of markers joined by odd characters, every odd character at least once, then random mixes."""
    rng = random.Random(seed)
    out = [f"{MARKERS[0]}{c}{MARKERS[1]}" for c in ODD] + [f"{c}{MARKERS[2]}" for c in ODD]
    out += [f"{MARKERS[3]}{c}" for c in ODD]
    for _ in range(n):
        pieces = rng.sample(MARKERS, rng.randint(1, len(MARKERS)))
        out.append("".join(p + "".join(rng.choices(ODD, k=rng.randint(0, 3))) for p in pieces))
    return out


def _shows_password(text: str, password: str) -> bool:
    return any(m in text for m in MARKERS if m in password)


def test_redact_never_shows_a_piece_of_any_password_in_any_form():
    checked = 0
    for password in _passwords():
        for form in FORMS:
            url = form.format(pw=password)
            shown = redact(url)
            assert not _shows_password(shown, password), (url, shown)
            assert "***" in shown, (url, shown)
            checked += 1
    assert checked > 3000


def test_a_refusal_never_shows_a_piece_of_the_password_and_an_accepted_url_redacts_clean():
    refused = accepted = 0
    for password in _passwords():
        for form in FORMS:
            url = form.format(pw=password)
            try:
                canonical = normalise(url)
            except ConfigError as e:
                assert not _shows_password(str(e), password), (url, str(e))
                assert "percent-encode" in str(e) and "\n" not in str(e)
                refused += 1
            else:
                assert not _shows_password(redact(canonical), password), (url, redact(canonical))
                accepted += 1
    assert refused > 1000 and accepted > 1000


def test_every_password_percent_encoded_is_accepted_and_read_back_whole():
    """The refusals above never refuse a password written as their advice says."""
    from redis.connection import parse_url

    for password in _passwords(100):
        encoded = quote(password, safe="")
        for form in FORMS:
            canonical = normalise(form.format(pw=encoded))
            if form.startswith("sentinel"):
                assert parse_sentinel(canonical).password == password, form
            elif not form.startswith("unix"):
                assert parse_url(canonical)["password"] == password, form
            assert not _shows_password(redact(canonical), password)


@pytest.mark.parametrize("char", sorted(set(SPECIAL) - {"@", "%", "&"}) + ["\t", "\n"])
@pytest.mark.parametrize("form", ["redis://:{pw}@127.0.0.1:6379/0", "rediss://u:{pw}@h:6380/0",
                                  "sentinel://:{pw}@s1:26379;sentinel://s2:26380"])
def test_a_character_that_would_cut_the_password_is_refused_with_its_encoding(char, form):
    """Raw, each of these makes kombu or redis-py read another password (or another URL); one line says how to
    write it."""
    with pytest.raises(ConfigError) as e:
        normalise(form.format(pw=f"Qz7{char}Xw9"))
    message = str(e.value)
    assert "percent-encode" in message and SPECIAL.get(char, "%09") in message and "\n" not in message
    assert "Qz7" not in message and "Xw9" not in message


@pytest.mark.parametrize("form", ["redis://127.0.0.1:6379/0?password={pw}", "redis://h/0?password={pw}&db=1"])
@pytest.mark.parametrize("char", ["#", "&"])
def test_a_query_password_cut_by_its_own_characters_is_refused(form, char):
    with pytest.raises(ConfigError) as e:
        normalise(form.format(pw=f"Qz7{char}Xw9"))
    assert "percent-encode" in str(e.value) and "Qz7" not in str(e.value) and "Xw9" not in str(e.value)


@pytest.mark.parametrize("password", ["top;secret", "a/b?c#d[e]f", "50%;off", "p@ss:w rd", "pässwörd€;", "x&y=z+"])
def test_a_percent_encoded_password_reaches_kombu_and_redis_py_whole(password):
    """What every client of the URL reads: digitq's canonical form, redis-py's parser, kombu's (Celery's broker)."""
    from kombu import Connection
    from redis.connection import parse_url

    encoded = quote(password, safe="")
    url = normalise(f"redis://:{encoded}@127.0.0.1:6379/0")
    assert parse_url(url)["password"] == password
    assert Connection(url).password == password
    sentinel = normalise(f"sentinel://:{encoded}@s1:26379;sentinel://s2:26380")
    assert parse_sentinel(sentinel).password == password
    for part in Connection(parse_sentinel(sentinel).kombu_url).alt:  # kombu's own split into the sentinels
        assert Connection(part).password == password
    query = normalise(f"redis://127.0.0.1:6379/0?password={encoded}")
    assert parse_url(query)["password"] == password and Connection(query).password == password
    for shown in (redact(url), redact(sentinel), redact(query)):
        assert encoded not in shown and password not in shown


# -- real processes ----------------------------------------------------------------------------------------------

PASSWORD = "top;Qz7secret"


@pytest.fixture(scope="module")
def locked_redis():
    from digitq.bus.server import RedisServer

    server = RedisServer(password=PASSWORD).start()
    yield server
    server.stop()


def _digitq(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_a_raw_semicolon_password_is_refused_before_anything_is_written(locked_redis, tmp_path, mnist):
    """The issue's repro: a Redis whose password has a ';'. Unencoded, `scan` and a worker stop at once with one
    line of advice and the exit code of a configuration error, and write nothing."""
    from model.dataset import write_image_folder

    write_image_folder(tmp_path / "in", mnist.x_test[:4], mnist.y_test[:4])
    data = tmp_path / "data"
    raw = f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    for query in (False, True):
        url = f"redis://127.0.0.1:{locked_redis.port}/0?password={PASSWORD}&db=x#y" if query else raw
        env = {"DIGITQ_REDIS_URL": url, "DIGITQ_DATA_DIR": str(data)}
        for args in (("scan", str(tmp_path / "in"), "--wait", "--timeout", "30"), ("workers",)):
            done = _digitq(env, *args, cwd=tmp_path)
            output = done.stdout + done.stderr
            assert done.returncode == 2, output
            assert output.strip().count("\n") == 0 and output.startswith("Error: ") and "percent-encode" in output
            assert "Traceback" not in output and "Qz7" not in output and "secret" not in output
    assert not data.exists(), "nothing may be written before the URL is accepted"
    worker = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "warning"],
                            env={**os.environ, "DIGITQ_REDIS_URL": raw, "DIGITQ_DATA_DIR": str(data)},
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = worker.stdout + worker.stderr
    assert worker.returncode != 0 and "percent-encode" in output and output.strip().count("\n") == 0, output
    assert "Traceback" not in output and "Qz7" not in output and "secret" not in output
    assert not data.exists()
    assert locked_redis.proc.poll() is None


def test_the_same_password_percent_encoded_works_end_to_end(locked_redis, tmp_path, mnist):
    """`%3B` for the ';': a real worker and `digitq scan --wait` through the Redis with that password."""
    from model.dataset import write_image_folder
    from worker.process import WorkerProcess

    write_image_folder(tmp_path / "in", mnist.x_test[:8], mnist.y_test[:8])
    data = tmp_path / "data"
    data.mkdir()
    env = {"DIGITQ_REDIS_URL": f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{locked_redis.port}/0",
           "DIGITQ_DATA_DIR": str(data)}
    with WorkerProcess(env, tmp_path / "worker.log", name="enc") as worker:
        done = _digitq(env, "scan", str(tmp_path / "in"), "--batch-size", "4", "--wait", "--timeout", "120", "--json",
                       cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["state"] == "done" and summary["done"] == 8
        workers = _digitq(env, "workers", "--json", cwd=tmp_path)
        assert workers.returncode == 0, workers.stderr
        log = worker.log()
    for text in (done.stdout + done.stderr, workers.stdout + workers.stderr, log):
        assert "Qz7" not in text and "secret" not in text
