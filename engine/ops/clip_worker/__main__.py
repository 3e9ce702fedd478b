"""`python -m engine.ops.clip_worker serve ...`: the clip-scoring server."""

import sys

from engine.ops.clip_worker.server import main

sys.exit(main())
