# Shared by scripts/demo.sh and scripts/test.sh: a project venv with gridedge installed (idempotent).
# Sourced, not executed. Everything the project needs is installed here: a fresh machine needs nothing else.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

apt_install() {
  # Debian packages, installed only when missing (root, or sudo without a password).
  local missing=()
  for spec in "$@"; do
    local pkg="${spec%%:*}" probe="${spec#*:}"
    command -v "$probe" >/dev/null 2>&1 || [ -e "$probe" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  echo "gridedge: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.gridedge-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
# Substations are offline: Flower must never phone home (telemetry, update check).
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
