"""Quality: how good a version is. Metrics (accuracy, cross-entropy, ECE), evaluation on the test split,
the robustness suite of shifted digits, and fitting a version's temperature (calibration).

Imports serving/ (it scores what workers serve), never training/.
"""
