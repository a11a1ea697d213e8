"""Errors that users see. Every message names the field at fault and how to fix it."""
from __future__ import annotations


class ProCacheError(ValueError):
    """A user-facing configuration error: ``field`` is what was wrong, ``fix`` what to do."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"ProCache: '{field}' {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class ScheduleError(ProCacheError):
    """A schedule or preset is malformed or cannot be satisfied."""


class UnsupportedModelError(ProCacheError):
    """The MODEL handed to ProCache belongs to a family that has no adapter."""
