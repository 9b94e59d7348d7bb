"""Serving: what a prediction worker runs. Decoding any image file to the model's 28x28 input
(preprocess, cleaning, the C JPEG reader), the runtimes that score it, the version's temperature
applied to the probabilities, and model versions fetched by content through Redis (artifacts).

No TensorFlow here unless a version is served with Keras; nothing from quality/ or training/.
"""
