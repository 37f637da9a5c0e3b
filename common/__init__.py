"""Code shared by the classify and preprocess services.

Nothing in this package may import TensorFlow: the preprocess Bento ships it and must stay light.
"""
