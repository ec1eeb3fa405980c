"""``python -m kdflow.cli``: the ``kdflow`` command."""

import sys

from kdflow.cli import main

sys.exit(main())
