"""``python -m lowps.cli_score`` == ``lowps-score`` (handy under ``torchrun -m``)."""
import sys

from .cli.score import score_main

if __name__ == "__main__":
    sys.exit(score_main())
