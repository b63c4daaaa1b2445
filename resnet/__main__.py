"""``python -m resnet``: the same as the ``resnet`` command."""

import sys

from resnet.cli import main

sys.exit(main())
