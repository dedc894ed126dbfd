"""Subcommands of the ``cardiomm`` command line, one module each (see :mod:`cardiomm.cli`)."""
