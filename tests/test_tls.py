"""Redis over TLS, end to end: the producer and a real worker verify the server's certificate."""

import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from digitq.bus.server import find_redis_server, free_port
from digitq.disk import csvfile
from model.dataset import write_image_folder
from producer.cli import main
from worker.process import WorkerProcess

from .pipeline_helpers import last_json, wait_until


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _unavailable(why: str) -> None:
    """Skip on a developer's machine without TLS tools; fail in CI, where scripts/test.sh installs Debian's
    redis-server (built with TLS) and openssl, so that a skip can never hide a TLS regression."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}: scripts/test.sh should have installed them (Debian's redis-server and openssl)")
    pytest.skip(why)


@pytest.fixture
def tls_redis(tmp_path):
    if not shutil.which("openssl"):
        _unavailable("openssl is needed to make test certificates")
    certs = tmp_path / "certs"
    certs.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=digitq test CA", cwd=certs)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=certs)
    (certs / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "1", "-extfile", "ext", cwd=certs)
    port = free_port()
    proc = subprocess.Popen([find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
                             "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no", "--save", "",
                             "--appendonly", "no"], cwd=certs, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import redis

        def up():
            if proc.poll() is not None:
                _unavailable(f"this redis-server has no TLS support: {proc.stdout.read().decode()[-200:]}")
            try:
                return redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0", ssl_ca_certs=str(certs / "ca.crt")).ping()
            except redis.exceptions.ConnectionError:
                return False

        wait_until(up, timeout=10, what="TLS redis")
        yield f"rediss://127.0.0.1:{port}/0", certs / "ca.crt"
    finally:
        proc.terminate()
        proc.wait(10)


def test_scan_over_tls(tls_redis, tmp_path, mnist):
    url, ca = tls_redis
    folder = tmp_path / "in"
    write_image_folder(folder, mnist.x_test[:20], mnist.y_test[:20])
    env = {"DIGITQ_REDIS_URL": url, "DIGITQ_DATA_DIR": str(tmp_path / "data"), "DIGITQ_REDIS_CA": str(ca)}
    unverified = CliRunner().invoke(main, ["scan", str(folder)], env={**env, "DIGITQ_REDIS_CA": ""})
    assert unverified.exit_code == 1 and "cannot reach Redis" in unverified.stderr  # unknown CA: refused
    with WorkerProcess(env, tmp_path / "w.log"):
        result = CliRunner().invoke(main, ["scan", str(folder), "--wait", "--json", "--timeout", "60"], env=env)
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert summary["state"] == "done" and len(csvfile.read(summary["output"])) == 20
