"""python -m app: the same as rnnlm-serve."""

import sys

from app.main import cli

sys.exit(cli())
