"""One error that reports every problem found at once (dataset files, impulse responses, ...)."""

from __future__ import annotations

MAX_LISTED = 20


class ProblemsError(ValueError):
    """Several problems with one subject (a dataset, a folder): the first 20 listed, the rest counted.

    Args:
      subject: what the problems are in, e.g. ``"dataset /data/tau"``.
      problems: one line per problem, each naming its file (and line).
    """

    def __init__(self, subject: str, problems: list[str]):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_LISTED])
        rest = len(self.problems) - MAX_LISTED
        more = f"\n  ... and {rest} more problem(s)" if rest > 0 else ""
        super().__init__(f"{subject}: {len(self.problems)} problem(s):\n{shown}{more}")


class StageError(RuntimeError):
    """A stage cannot run (missing inputs from an earlier stage, inputs made with other settings, ...)."""
