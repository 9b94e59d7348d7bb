"""The digit classifier: the registry of versions and the datasets, then three packages.

- :mod:`model.serving`: what a prediction worker runs (decode, score, calibrated confidence);
- :mod:`model.quality`: metrics, evaluation, the robustness suite, fitting the temperature;
- :mod:`model.training`: the recipe, a training run, its data, export and plots.

serving imports neither of the others, quality imports serving, training imports both
(tests/test_imports.py). Importing this package is cheap; TensorFlow is imported only where a
Keras model is fitted or loaded.
"""
