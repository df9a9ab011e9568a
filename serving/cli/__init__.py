"""The ``polyhead`` command line: one module per command group; they parse, call library functions, print.

``main`` builds the parser from every group's ``register(subparsers)`` and handles signals, errors and
exit codes; ``options`` holds the options several groups share. Nothing imports the CLI.
Entry point: :func:`serving.cli.main.main`.
"""
