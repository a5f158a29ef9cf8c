"""``python -m retrain``: see :mod:`retrain.cli`."""

import sys

from retrain.cli import main

sys.exit(main())
