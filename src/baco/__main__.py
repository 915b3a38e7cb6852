"""`python -m baco ...`: the `baco` command."""

import sys

from baco.cli import main

sys.exit(main())
