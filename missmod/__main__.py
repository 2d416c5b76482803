"""`python -m missmod …`, the same as the `missmod` command."""

import sys

from .cli import main

sys.exit(main())
