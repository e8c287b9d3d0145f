"""Prototypes of proposed polybus changes, as monkeypatches measured before editing.

Each module patches polybus when run (``runpy.run_path``); A/B one against the current
code with ``python -m bench.ab bench/proposals/<name>.py --transports tcp,redis``, or run
any benchmark with it: ``BENCH_PATCH=bench/proposals/<name>.py python -m bench ...``.
They are not imported by anything else.
"""
