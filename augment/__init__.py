"""Importing any project package selects Keras 2 (tf_keras) before TensorFlow loads."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from augment.shift import TimeShift  # noqa: E402
from augment.specaugment import SpecAugmentPP  # noqa: E402
from augment.tta import (  # noqa: E402
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
