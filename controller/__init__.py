"""curtaild's controller: the only place with orchestration (CLI, config, loop, guards, journal)."""

__version__ = "0.1.0"
