#!/usr/bin/env bash
# The whole test suite, slow durability tests included. Installs what it needs (Debian packages, venv).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for a quick run.
source "$(dirname "$0")/_env.sh"
# e2fsprogs + util-linux: the power-cut test (mkfs.ext4, losetup, fsfreeze); python3.11: the real-systemd test
apt_install mosquitto:/usr/sbin/mosquitto socat:socat systemd:systemd-analyze dpkg-dev:dpkg-buildpackage \
  debhelper:dh fakeroot:fakeroot e2fsprogs:mkfs.ext4 util-linux:fsfreeze python3.11:/usr/bin/python3.11
ruff check .
exec python -m pytest -q -p no:cacheprovider --durations=15 "$@"
