"""Data in: the TAU22 layout reader (``tau``), the WAV audit, the tf.data input pipelines, the synthetic set."""
