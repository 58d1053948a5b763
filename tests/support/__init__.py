"""Helpers shared by the test suites: emulator and daemon processes on loopback."""
