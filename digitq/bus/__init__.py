"""Redis and Celery as digitq uses them.

- ``broker``: the Celery configuration, the producer's client app, Redis clients and task names;
- ``urls``: Redis URLs in one canonical form, and redacted for messages;
- ``failover``: riding through a Sentinel failover; ``replication``: writes that wait for a replica;
- ``holders``: leases in Redis with a liveness check of their holder;
- ``keys``: every ``digitq:*`` key, with its lifetime and writer;
- ``server``: a private ``redis-server`` (and a Sentinel topology) for the demo and the tests.
"""
