"""Foundations every other package may import: Params, class and device lists, atomic files.

Nothing here imports the orchestration (stages, runner, tracking, training, CLI), MLflow or
TensorFlow, so ``models``, ``augment`` and ``evaluate`` can depend on it without running up
the house.
"""

from pipeline.core import env  # noqa: F401  (selects tf_keras before TensorFlow loads)
