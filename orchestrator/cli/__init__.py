"""The ``prunesweep`` command line: one module per command, assembled by :mod:`.main`."""
from orchestrator.cli.main import EXIT_BAD_INPUT, build_parser, main  # noqa: F401

__all__ = ["EXIT_BAD_INPUT", "build_parser", "main"]
