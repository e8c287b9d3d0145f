#!/usr/bin/env bash
# mypy --strict on core/ and transports/ under their import names (polybus, polybus.transports):
# the source folders are mapped to those names at install time, so check a mirror of them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
mirror=$(mktemp -d)
trap 'rm -rf "$mirror"' EXIT
mkdir -p "$mirror/polybus"
cp -r "$root"/core/. "$mirror/polybus/"
cp -r "$root/transports" "$mirror/polybus/transports"
find "$mirror" -name __pycache__ -prune -exec rm -rf {} +
cd "$mirror"
"$py" -m mypy --strict --config-file "$root/pyproject.toml" -p polybus \
  | sed "s#^polybus/transports/#transports/#; s#^polybus/#core/#"
