#!/usr/bin/env bash
# Runs the Python SDK's tests against a real `agentvault dev` sidecar.
#
# Makes clients/python/.venv (if absent or broken), installs the package with
# its test extras in editable mode, and runs pytest; extra arguments go to
# pytest. The tests use $AGENTVAULT_BIN, else target/debug/agentvault of this
# repository (`cargo build` first; they build it if it is missing).
# Exits non-zero when a test fails or none ran; skipped tests are fine.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "run-tests.sh: $PYTHON is $("$PYTHON" -V 2>&1); the SDK needs Python >= 3.10" >&2
  exit 1
fi

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    echo "run-tests.sh: could not create a venv (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'

set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "run-tests.sh: pytest collected no tests" >&2
fi
exit "$status"
