"""The producer: the ``digitq`` command line. It walks folders, writes job
manifests and sends tasks to Redis by name; it never imports TensorFlow."""
