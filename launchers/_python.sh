# Sourced by the launchers: PY is the project's .venv Python when there is one (`make demo` and
# `make test` create it), so the scripts work without activating it; else $PYTHON or python.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$_root/.venv/bin/python" ]; then PY=$_root/.venv/bin/python
else PY=python
fi
