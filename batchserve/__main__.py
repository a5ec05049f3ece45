"""``python -m batchserve`` runs the CLI (handy where the console script is not on PATH)."""

from batchserve.launch import main

main()
