"""``python3 -m agent_runtime``: the container's entry point."""

from .main import run_and_exit

run_and_exit()
