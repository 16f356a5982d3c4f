"""``python -m pipeline.running.stages``: print the README's stage table, made from the stage records."""

from pipeline.running.stages import table

print(table())
