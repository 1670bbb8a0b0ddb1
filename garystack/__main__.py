"""`python -m garystack up|pull`."""

import sys

from .cli import main

sys.exit(main())
