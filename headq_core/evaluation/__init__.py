"""The evaluation room: the attention of one run inside a teacher-forced window, per-head metrics,
decode-exact evaluation, calibration of the query basis, corpora and windowing, and the results
documents they produce."""
