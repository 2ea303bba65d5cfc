"""``python -m lossmap`` (also what ``torchrun -m lossmap`` runs)."""

from lossmap.cli import main

main()
