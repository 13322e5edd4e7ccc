"""``python -m zfviz`` (and ``torchrun -m zfviz``) is the ``zfviz`` command."""

import sys

from zfviz.cli import main

sys.exit(main())
