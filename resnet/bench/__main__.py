"""``python -m resnet.bench``: the benchmark's command line (``resnet.bench.cli``)."""

import sys

from resnet.bench.cli import main

sys.exit(main())
