"""`python -m slmkit ...` is the `slmkit` command."""

import sys

from slmkit.cli.main import main

sys.exit(main())
