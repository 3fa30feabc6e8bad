#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter that actually runs, or fails with a message.
# pyenv's bare python3.12 shim refuses to run unless a version is selected, so pyenv's own
# interpreters are tried by full path first, then whatever python3.12/python3.13 is on PATH.
set -u
candidates=()
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for p in "$root"/versions/3.12*/bin/python3.12 "$root"/versions/3.13*/bin/python3.13; do
    [ -x "$p" ] && candidates+=("$p")
  done
fi
for name in python3.12 python3.13 python3; do
  p=$(command -v "$name" 2>/dev/null) && candidates+=("$p")
done
for p in "${candidates[@]}"; do
  if "$p" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 12), (3, 13)) else 1)' 2>/dev/null; then
    echo "$p"
    exit 0
  fi
done
echo "error: no Python 3.12 or 3.13 found (tried: ${candidates[*]:-nothing}). Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
exit 1
