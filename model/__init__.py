"""The demo model: feature constants, preprocessing_fn, Keras model, eval config, training."""

import os

# TFT's transform layer and TFMA need Keras 2; TensorFlow 2.16 picks Keras 3 unless this is set
# before its first import.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
