"""``python -m tubeworker`` is ``tubeworker``."""

import sys

from tubeworker.cli import main

sys.exit(main())
