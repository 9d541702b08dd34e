"""Exceptions shared by the methods layer."""


class Cancelled(Exception):
    """A long computation stopped because its `should_cancel()` callback returned True."""
