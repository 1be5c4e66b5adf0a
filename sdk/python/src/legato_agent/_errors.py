"""How an attempt fails, as an agent function says it."""

from __future__ import annotations


class RetryableError(Exception):
    """The attempt failed in a way a later attempt may not: retried under the
    step's retry policy. Any exception an agent raises counts as this unless it
    is a :class:`FatalError`."""


class FatalError(Exception):
    """The attempt failed in a way no retry will mend: the step fails at once
    (and the workflow rolls back or fails as its definition says)."""


class Asked(BaseException):
    """Raised by :meth:`Task.ask` once the question is sent: the attempt ends
    there, holding no worker, and the task comes again with the answer. A
    ``BaseException``, so ``except Exception`` in agent code lets it pass."""
