"""``python -m app.simulator``."""

from app.simulator.cli import main

main()
