"""The one place that selects Keras 2 (``tf_keras``) for ``tf.keras`` and TFMOT.

TensorFlow reads ``TF_USE_LEGACY_KERAS`` when it is first imported, so this module is
imported by every package's ``__init__`` (``pipeline``, ``models``, ``augment``,
``evaluate``) and by the test and benchmark entry points, before anything imports TensorFlow.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
