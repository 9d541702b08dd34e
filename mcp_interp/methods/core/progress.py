"""Progress reporting and cooperative cancellation, shared by every method and by the job runtime.

A long method takes `progress(fraction, message)` and `should_cancel() -> bool` callbacks; it calls
`check_cancelled(should_cancel)` between batches, which raises `Cancelled`. The job runtime raises the
same exception, so one `except Cancelled` covers both.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]
ShouldCancel = Callable[[], bool]


class Cancelled(Exception):
    """A long computation stopped because cancellation was requested (`should_cancel()` returned True)."""


def check_cancelled(should_cancel: ShouldCancel | None, what: str = "") -> None:
    """Raise `Cancelled` when `should_cancel()` says so; a None callback never cancels."""
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"{what} cancelled" if what else "cancelled")


def span(progress: Progress | None, start: float, end: float) -> Progress | None:
    """`progress` mapped onto [start, end]: a sub-computation reports 0..1 of its own part."""
    if progress is None:
        return None
    return lambda f, m="": progress(start + (end - start) * float(f), m)
