"""Curtailment policies: pure decision code that operators read and edit."""
