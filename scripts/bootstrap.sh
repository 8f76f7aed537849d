# Sourced by the other scripts: make sure uv exists and the locked environment is installed.
# Works on a fresh machine with only Python 3.11: uv is bootstrapped with pip when missing.
set -euo pipefail
if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: installing uv with pip" >&2
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --quiet --extra data
