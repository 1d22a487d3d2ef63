"""Numeric limits shared by the job spec, the results document and the store."""

INT32_MAX = 2**31 - 1  # the integer columns are 32-bit on PostgreSQL
