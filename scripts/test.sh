#!/usr/bin/env bash
# The whole test suite, slow durability tests included. Installs what it needs (Debian packages, venv).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for a quick run.
source "$(dirname "$0")/_env.sh"
# e2fsprogs + util-linux: the power-cut test (mkfs.ext4, losetup, fsfreeze); python3.11: the real-systemd test;
# nginx-light: the control centre's Fleet API proxy (tests/test_federation_fleet_proxy.py)
apt_install mosquitto:/usr/sbin/mosquitto socat:socat systemd:systemd-analyze dpkg-dev:dpkg-buildpackage \
  debhelper:dh fakeroot:fakeroot e2fsprogs:mkfs.ext4 util-linux:fsfreeze python3.11:/usr/bin/python3.11 \
  nginx-light:/usr/sbin/nginx
# The independent Modbus peers (tests/test_modbus_interop.py): a libmodbus C server built with gcc, and
# npm modbus-serial (pinned in tests/peers/node/package-lock.json, installed into its git-ignored
# node_modules).
apt_install gcc:gcc nodejs:node npm:npm libmodbus-dev:/usr/include/modbus/modbus.h
if [ ! -d tests/peers/node/node_modules/modbus-serial ] \
  || [ tests/peers/node/package-lock.json -nt tests/peers/node/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/peers/node --omit=optional --no-audit --no-fund --loglevel=error
fi
ruff check .
# Fill numba's cache once, as the package's postinst does on a real install: the daemons the tests start
# then load the kernels instead of each compiling them (the cold start itself is tested with an empty
# NUMBA_CACHE_DIR in tests/test_runtime_startup.py).
python -m gridedge.gateway.runtime.precompile
exec python -m pytest -q -p no:cacheprovider --durations=15 "$@"
