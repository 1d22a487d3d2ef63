"""Exceptions shared across headq_core."""


class Cancelled(Exception):
    """Raised between windows when the caller's ``should_stop()`` returns True."""
