"""What the services refuse, by kind; the API maps each kind to one status code, once (api/errors.py)."""

from __future__ import annotations


class NotFound(LookupError):
    """No such sweep, run or schedule."""


class Conflict(RuntimeError):
    """The request contradicts what is stored (retrying a run that has not ended; a key reused for another body)."""


class InvalidRequest(ValueError):
    """A request refused field by field; `errors` are (field path, message) pairs (`run.train.steps`)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
