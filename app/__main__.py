"""python -m app: the same as rnnlm-serve."""

import sys

from app.serve import main

sys.exit(main())
