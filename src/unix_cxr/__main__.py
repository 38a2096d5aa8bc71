"""`python -m unix_cxr` = the `unix-cxr` command."""

import sys

from .cli import main

sys.exit(main())
