"""digitq core: settings, errors, job storage and CSV output shared by producer and worker.

Nothing in this package imports TensorFlow.
"""

__version__ = "0.1.0"
