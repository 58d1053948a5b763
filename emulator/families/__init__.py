"""Firmware families: each turns protocol requests into calls on the physical model."""
