"""Knowledge distillation loss (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network").

The student trains on targets that carry both the label and the teacher's logits: ``y_true`` is
``[B, 1 + K]`` = ``[label, teacher_logit_1 ... teacher_logit_K]`` (see
:func:`pack_targets`). The loss is

    (1 - weight) * CE(label, softmax(s))  +  weight * T^2 * KL(softmax(t / T) || softmax(s / T))

with ``s`` the student's logits, ``t`` the teacher's, ``T`` the temperature; the ``T^2`` factor
keeps the soft term's gradients on the scale of the hard term's (Hinton et al., section 2).
Validation batches carry plain integer labels ``[B]``: for them the loss is the plain
cross-entropy, so ``val_loss`` stays comparable with runs trained without distillation.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from pipeline.core.checks import check_real


def pack_targets(labels: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
    """``[N, 1 + K]`` float32 targets: the integer label, then the teacher's ``K`` logits."""
    labels = np.asarray(labels, np.float32).reshape(-1, 1)
    teacher_logits = np.asarray(teacher_logits, np.float32)
    if teacher_logits.ndim != 2 or len(teacher_logits) != len(labels):
        raise ValueError(f"teacher_logits must be [N={len(labels)}, K], got shape {teacher_logits.shape}")
    return np.concatenate([labels, teacher_logits], axis=1)


def _split(y_true, n_classes: int):
    """(integer labels [B], teacher logits [B, K] or None) of a target batch."""
    if y_true.shape.rank == 2 and y_true.shape[-1] == 1 + n_classes:
        return tf.cast(y_true[:, 0], tf.int32), tf.cast(y_true[:, 1:], tf.float32)
    return tf.cast(tf.reshape(y_true, [-1]), tf.int32), None


@tf_keras.saving.register_keras_serializable(package="asc")
class DistillationLoss(tf_keras.losses.Loss):
    """Cross-entropy on the label plus temperature-scaled KL divergence to the teacher.

    Args:
      temperature: softmax temperature ``T`` (> 0) of both teacher and student in the KL term.
      weight: weight of the distillation term in [0, 1]; the label term has ``1 - weight``.

    Input: ``y_true`` ``[B, 1 + K]`` (label, teacher logits) or ``[B]`` labels; ``y_pred`` logits ``[B, K]``.
    Output: the per-sample loss ``[B]`` (reduced by Keras).
    """

    def __init__(self, temperature: float = 2.0, weight: float = 0.5, name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_real("temperature", temperature, 0.0, exclusive=True)
        self.weight = check_real("weight", weight, 0.0)
        if self.weight > 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight!r}")

    def call(self, y_true, y_pred):
        labels, teacher = _split(y_true, int(y_pred.shape[-1]))
        ce = tf_keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)  # [B]
        if teacher is None:
            return ce
        t = self.temperature
        p_teacher = tf.nn.softmax(teacher / t)  # [B, K]
        log_p_student = tf.nn.log_softmax(y_pred / t)  # [B, K]
        log_p_teacher = tf.nn.log_softmax(teacher / t)
        kl = tf.reduce_sum(p_teacher * (log_p_teacher - log_p_student), axis=-1)  # [B]
        return (1.0 - self.weight) * ce + self.weight * t * t * kl

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "weight": self.weight}


@tf_keras.saving.register_keras_serializable(package="asc")
class LabelAccuracy(tf_keras.metrics.SparseCategoricalAccuracy):
    """Sparse categorical accuracy that reads the label from distillation targets (column 0) too."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, _ = _split(y_true, int(y_pred.shape[-1]))
        return super().update_state(labels, y_pred, sample_weight)
