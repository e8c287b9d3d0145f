#!/usr/bin/env bash
# Both ends of the supported range (pyproject: requires-python >= 3.10): the tests that need
# no broker (unit, conformance over memory:// and tcp://, TCP reliability, shutdown) under
# Python 3.10 and 3.13, each in its own venv (.venv-3.10, .venv-3.13). CI runs mostly on
# the machine's python3 (3.11); event-loop internals differ across versions (3.12+ Tasks,
# for one, refuse generator-based coroutines), so the ends are checked too.
# Under CI=true a missing interpreter fails; elsewhere it is skipped with a notice.
set -euo pipefail
cd "$(dirname "$0")/.."

# python<version> on PATH if it runs, else the newest pyenv build of that version.
find_python() {
  local version=$1 build
  if command -v "python$version" >/dev/null && "python$version" -c "" 2>/dev/null; then
    command -v "python$version"
  elif command -v pyenv >/dev/null; then
    build=$(pyenv versions --bare 2>/dev/null | grep -E "^$version\.[0-9]+$" | sort -V | tail -1)
    if [ -n "$build" ] && [ -x "$(pyenv root)/versions/$build/bin/python$version" ]; then
      echo "$(pyenv root)/versions/$build/bin/python$version"
    fi
  fi
}

for version in ${POLYBUS_PYTHONS:-3.10 3.13}; do
  python=$(find_python "$version")
  if [ -z "$python" ]; then
    if [ "${CI:-}" = true ]; then
      echo "pythons.sh: python$version is not installed" >&2
      exit 1
    fi
    echo "pythons.sh: python$version is not installed: skipped"
    continue
  fi
  venv=.venv-$version
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e tests/plugins/loopback
  echo "pythons.sh: $("$venv/bin/python" -V)"
  "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs \
    tests/unit tests/integration/test_tcp_reliability.py tests/integration/test_shutdown.py
  "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs \
    tests/integration/test_conformance.py -k "memory or tcp or loopback"
done
