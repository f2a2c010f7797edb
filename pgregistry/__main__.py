"""``python -m pgregistry``: the same as the ``pgregistry`` command."""

import sys

from .cli import main

sys.exit(main())
