"""Sub-commands of the ``headq`` command line, one module per group, each with ``register(subparsers)``."""
