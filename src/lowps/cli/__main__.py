"""``python -m lowps.cli`` == ``lowps`` (handy under ``torchrun -m``)."""
import sys

from . import main

sys.exit(main())
