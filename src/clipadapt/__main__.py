"""``python -m clipadapt`` (also what ``accelerate launch -m clipadapt`` runs)."""

from clipadapt.cli import main

main()
