"""``python -m serving.cli``: the ``medgate`` command."""
import sys

from serving.cli.main import main

sys.exit(main())
