"""`python -m lmscope ...` (also what `torchrun -m lmscope ...` runs)."""

import sys

from .cli import main

sys.exit(main())
