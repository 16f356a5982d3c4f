"""Importing any project package selects Keras 2 (tf_keras) before TensorFlow loads."""

import pipeline.core.env  # noqa: F401  (selects tf_keras before TensorFlow loads)
