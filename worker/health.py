"""Container health check: exit 0 while a Celery worker on this host answers a ping through Redis.

``python -m worker.health`` (the Dockerfile's HEALTHCHECK). It imports the Celery client only,
not the model, so a check costs a fraction of a second.
"""

from __future__ import annotations

import socket
import sys

from digitq.bus.broker import client_app
from digitq.settings import Settings


def local_workers(timeout: float = 5.0) -> list[str]:
    """Names of the workers on this host (node name ``*@<hostname>``) that answered a ping."""
    app = client_app(Settings.from_env())
    try:
        replies = app.control.inspect(timeout=timeout).ping() or {}
    finally:
        app.close()
    suffix = "@" + socket.gethostname()
    return [name for name in replies if name.endswith(suffix)]


def main() -> int:
    try:
        names = local_workers()
    except Exception as e:  # any failure to reach Redis makes the container unhealthy, with the reason
        print(f"unhealthy: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if not names:
        print(f"unhealthy: no worker on {socket.gethostname()} answered a ping", file=sys.stderr)
        return 1
    print("healthy: " + ", ".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
