"""``python -m pyro_mapa demo``."""

import sys

from .cli import main

sys.exit(main())
