"""Every proposal at once."""

from __future__ import annotations

import runpy
from pathlib import Path

here = Path(__file__).parent
for name in ("eager_handlers", "tcp_chunked_read", "unary_call"):
    runpy.run_path(str(here / f"{name}.py"))
