"""Helpers shared by the tests and the benchmarks (never imported by the product): a live server,
headless Chromium, a synthetic results document, a tiny saved model."""
