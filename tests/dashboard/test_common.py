"""Shared page helpers: query-string parsing and the choice of a linked job."""

from __future__ import annotations

import pytest

from app.dashboard.common import as_index, linked_job, pick

OPTIONS = [{"label": "newest", "value": "j2"}, {"label": "older", "value": "j1"}]


def test_as_index_parses_query_values():
    assert as_index("3", "layer") == 3 and as_index(None, "layer") is None and as_index("", "head") is None
    with pytest.raises(ValueError, match="^head: must be a whole number"):
        as_index("x", "head")
    with pytest.raises(ValueError, match="^layer: must be >= 0"):
        as_index("-1", "layer")


def test_pick_keeps_a_known_value_else_the_first():
    assert pick("j1", OPTIONS) == "j1" and pick("zz", OPTIONS) == "j2" and pick("a", []) is None


def test_linked_job_says_when_the_link_is_unknown():
    assert linked_job("j1", OPTIONS) == ("j1", None)
    assert linked_job(None, OPTIONS) == ("j2", None)
    chosen, note = linked_job("gone", OPTIONS)
    assert chosen == "j2" and note is not None and note.startswith("job: gone is not a succeeded")
