"""`python -m ncx`: the ncx command line (ncx.cli)."""
import sys

from .cli import main

sys.exit(main())
