"""``python -m worker`` is ``tubeworker``."""

import sys

from worker.cli import main

sys.exit(main())
