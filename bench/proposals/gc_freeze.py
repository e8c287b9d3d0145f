"""``gc.freeze()`` once the service is up (e.g. at the end of ``Microservice.listen()``).

At concurrency 100 each request keeps a few GC-tracked objects (Task, coroutine, future,
context) alive across loop iterations, so the allocation count crosses the gen-0
threshold every batch and in-flight objects get promoted: the server runs ~2,700 gen-0
and ~25 full collections per 10 s at 35k req/s, each full one scanning every object
imported at startup (pydantic, the client libraries: ~10 ms). Freezing what exists at
startup takes those objects out of every later collection. Here the freeze happens one
second after the process starts (the benchmark's imports and connections are done).
"""

from __future__ import annotations

import gc
import threading


def _freeze() -> None:
    gc.collect()
    gc.freeze()


threading.Timer(1.0, _freeze).start()
