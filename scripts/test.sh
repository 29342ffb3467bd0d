#!/usr/bin/env bash
# The whole test suite, slow durability tests included. Installs what it needs (Debian packages, venv).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for a quick run.
source "$(dirname "$0")/_env.sh"
apt_install mosquitto:/usr/sbin/mosquitto socat:socat systemd:systemd-analyze dpkg-dev:dpkg-buildpackage debhelper:dh fakeroot:fakeroot
ruff check .
exec python -m pytest -q -p no:cacheprovider --durations=15 "$@"
