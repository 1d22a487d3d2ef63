"""The ``headq`` command: one module per command group (``service``, ``jobs``, ``core``, ``demo``),
calling the REST client, the worker pipeline or the server."""
