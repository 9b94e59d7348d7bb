"""Training: the recipe and the seed CNN's architecture, training data from several sources and rendered
variants of it, a training request run to its end (run: train, evaluate, publish, gate), the ONNX
export and the plots published with a version.

``python -m model.training`` trains a model directory locally (``__main__``). TensorFlow is imported
only by what fits or loads a Keras model.
"""
