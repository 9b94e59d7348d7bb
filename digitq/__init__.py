"""digitq core, shared by the producer and the workers; it imports none of ``producer/``, ``worker/``, ``model/``.

- :mod:`digitq.bus`: Redis and Celery: connections, URLs, failover, replication, leases, and every key (``keys``);
- :mod:`digitq.disk`: everything under ``DIGITQ_DATA_DIR``: jobs, training requests, the score index, the CSV;
- :mod:`digitq.batch`: a batch's life: its message, the one commit path, blobs, copies, ledger, quarantine, stalls;
- :mod:`digitq.settings` and :mod:`digitq.errors`.

Nothing in this package imports TensorFlow.
"""

__version__ = "0.1.0"
