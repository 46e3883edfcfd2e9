"""Safer-Claw agent runtime (see main.py). Standard library only."""
