"""The named random streams of a run: each draws from ``seed + offset * k``, with its offset here.

One table, so two streams do not share a seed by accident and a reader sees where each comes
from. The values are the ones the code used before they were named (changing one changes every
result that depends on it). Two streams still coincide, as they always have: ``compress`` and
``teacher`` member 1 (both ``seed + 1000``, in two different stages).

======================  ======  ==============================================================
stream                  offset  used by
======================  ======  ==============================================================
``head_dropout1``       1       models/asc.py: the first dropout of the classifier's head
``head_dropout2``       2       models/asc.py: the second dropout of the classifier's head
``time_shift``          7       models/asc.py: the random circular time shift
``specaugment``         11      models/asc.py: SpecAugment++, ``k = 1 + position index``
``freq_mixstyle``       13      models/asc.py: Freq-MixStyle
``device_response``     17      models/asc.py: device response augmentation (``+ seed_offset``)
``compress.prune_data`` 101     stages/compress.py: the pruning fine-tune's data order
``compress.qat_data``   202     stages/compress.py: the QAT fine-tune's data order
``compress``            1000    stages/compress.py: ``seed_everything`` of the compress stage
``teacher``             1000    stages/teacher.py: ensemble member ``m`` (0-based), ``k = m + 1``
``specialize``          5000    stages/specialize.py: device ``d`` of ``specialize.devices``, ``k = 1 +``
                                its index among the training devices (a, b, c, s1, s2, s3)
======================  ======  ==============================================================
"""

from __future__ import annotations

STREAMS: dict[str, int] = {
    "head_dropout1": 1,
    "head_dropout2": 2,
    "time_shift": 7,
    "specaugment": 11,
    "freq_mixstyle": 13,
    "device_response": 17,
    "compress.prune_data": 101,
    "compress.qat_data": 202,
    "compress": 1000,
    "teacher": 1000,
    "specialize": 5000,
}


def stream_seed(seed: int, name: str, k: int = 1) -> int:
    """The seed of stream ``name``: ``seed + STREAMS[name] * k``.

    Args:
      seed: the run's seed (``params.seed``).
      name: a key of :data:`STREAMS`.
      k: the stream's index in a family of streams (a SpecAugment++ position, a teacher member); 1 for one.

    Returns:
      The integer seed.

    Raises:
      KeyError: an unknown stream, naming the known ones.
    """
    try:
        offset = STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown random stream {name!r}; known: {sorted(STREAMS)}") from None
    return seed + offset * k
