"""Importing any project package selects Keras 2 (tf_keras) before TensorFlow loads."""

import pipeline.core.env  # noqa: F401  (selects tf_keras before TensorFlow loads)
from augment.device_response import DeviceResponse
from augment.freq_mixstyle import FreqMixStyle
from augment.impulse_responses import ImpulseResponseError
from augment.shift import TimeShift
from augment.specaugment import SpecAugmentPP
from augment.tta import TTA, count_augmentation_layers, make_tta_model

__all__ = [
    "DeviceResponse",
    "FreqMixStyle",
    "ImpulseResponseError",
    "SpecAugmentPP",
    "TTA",
    "TimeShift",
    "count_augmentation_layers",
    "make_tta_model",
]
