"""``python -m nbchat``: the same as the ``nbchat`` command."""

import sys

from .cli import main

sys.exit(main())
