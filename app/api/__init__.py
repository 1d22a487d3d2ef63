"""The REST API (versioned under ``/api/v1``): schemas, dependencies, errors and routers."""
