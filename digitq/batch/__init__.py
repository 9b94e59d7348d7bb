"""A batch's life between the producer and the data dir.

- ``message``: what a batch travels as (:class:`~digitq.batch.message.BatchMessage`, its entries and context) and
  what a stateless worker hands back (:class:`~digitq.batch.message.Outcome`);
- ``commit``: the one commit path, wherever the batch was predicted;
- ``blobs``: large files beside their message; ``outbox``: a copy of each message until its batch commits;
- ``ledger``: which batches are committed (the O(1) last-batch check); ``quarantine``: files that kill workers;
- ``stalls``: why a job does not move, and the one rule for an orphaned job (``is_orphaned``).
"""
