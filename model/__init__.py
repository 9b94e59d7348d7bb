"""The digit classifier: architecture, data, training, registry of versions.

Importing this package is cheap; TensorFlow is imported only by the modules
that need it (architecture, training, evaluation, runtime).
"""
