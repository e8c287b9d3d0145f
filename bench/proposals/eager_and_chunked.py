"""Both ``eager_handlers`` and ``tcp_chunked_read``."""

from __future__ import annotations

import runpy
from pathlib import Path

here = Path(__file__).parent
runpy.run_path(str(here / "eager_handlers.py"))
runpy.run_path(str(here / "tcp_chunked_read.py"))
