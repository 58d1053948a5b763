"""Errors every layer raises and the controller reports: a config that cannot be used is
refused with one ``key: reason`` per problem, whichever layer (driver config, policy config,
the controller's own) found it."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds one ``key: reason`` per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
