"""``python -m stream.cli``: the ``bwp`` command."""

import sys

from stream.cli.main import main

sys.exit(main())
