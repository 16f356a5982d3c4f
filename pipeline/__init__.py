"""The pipeline: foundations (``pipeline.core``), data, input, training and the stages that wire them."""

from pipeline.core import env  # noqa: F401  (selects tf_keras before TensorFlow loads)
