"""The ``headq`` command: one module per command group (``service``, ``jobs``, ``core``, ``demo``),
calling the REST client, the worker pipeline or the server; ``presets``, ``progress``, ``table`` and
``helptext`` are what ``eval`` and ``demo`` share."""
