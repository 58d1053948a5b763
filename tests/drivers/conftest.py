"""Fixtures for the market-input driver tests (servers live in tests/drivers/fakeapi.py)."""

from tests.drivers.fakeapi import clock, fake_api, make_api  # noqa: F401 - pytest fixtures
