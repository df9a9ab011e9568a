"""The ``polyhead`` command line: one module per command group; they parse, call library functions, print.

Nothing imports the CLI. Entry point: :func:`serving.cli.main.main`.
"""
