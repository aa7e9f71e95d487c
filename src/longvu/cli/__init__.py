"""The ``longvu`` command: ``main`` dispatches to one module per subcommand."""
