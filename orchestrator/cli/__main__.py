"""``python -m orchestrator.cli``: the ``prunesweep`` console command."""
import sys

from orchestrator.cli.main import main

sys.exit(main())
