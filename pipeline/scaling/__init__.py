"""Scaling out: multi-worker training, the launcher, sweeps and their summaries."""
