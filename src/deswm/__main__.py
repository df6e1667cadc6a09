"""``python -m deswm`` runs the ``deswm`` command."""

import sys

from deswm.cli import main

sys.exit(main())
