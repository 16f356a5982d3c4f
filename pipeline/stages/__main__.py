"""``python -m pipeline.stages``: print the README's stage table, made from the stage records."""

from pipeline.stages import table

print(table())
