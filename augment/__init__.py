"""Importing any project package selects Keras 2 (tf_keras) before TensorFlow loads."""

import pipeline.core.env  # noqa: F401  (selects tf_keras before TensorFlow loads)

from augment.shift import TimeShift
from augment.specaugment import SpecAugmentPP
from augment.tta import (
    TTAConfig,
    count_augmentation_layers,
    make_tta_model,
    predict_tta,
    tta_probabilities,
)

__all__ = [
    "SpecAugmentPP",
    "TimeShift",
    "TTAConfig",
    "count_augmentation_layers",
    "make_tta_model",
    "predict_tta",
    "tta_probabilities",
]
