"""The metric names are one list: the store's head_rows columns and the evaluator use it."""

from headq_jobs.store.models import HeadRow
from headq_spec.metrics import HEAD_METRICS


def test_every_metric_has_a_head_rows_column():
    columns = set(HeadRow.__table__.columns.keys())
    assert set(HEAD_METRICS) <= columns
    assert len(set(HEAD_METRICS)) == len(HEAD_METRICS) == 9
