"""The shared vocabulary of HeadQ Lab: run configurations and job specs as plain, validated data.

Pure Python (dataclasses + pydantic, no torch), so the API image, the workers and the core library
all validate a configuration with the same rules: `headq_core` re-exports `runs`, `app` validates
job specs with `jobs`.
"""
