"""`python -m services.cli` is the same as the `packline` script."""

import sys

from services.cli.main import main

sys.exit(main())
