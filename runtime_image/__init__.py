"""Safer-Claw agent runtime image (a separate program; see README.md)."""
