#!/bin/bash
# Build gridedge_<version>_<arch>.deb with Debian's own tools (debhelper via dpkg-buildpackage).
#
#   packaging/build-deb.sh [--out DIR] [--python PY] [--wheels DIR] [--no-deps]
#
#   --out DIR     where the .deb goes (default: dist/)
#   --python PY   Python used to build the wheels; must be CPython 3.11 on the target architecture
#                 (Debian 12's python3), because compiled dependency wheels are bundled (default: python3)
#   --wheels DIR  take the dependency wheels from DIR (an offline build); default: pip wheel from the index
#   --no-deps     bundle only the gridedge wheel (fast; for inspecting the package, NOT installable offline)
#
# Needs: debhelper (>= 13), dpkg-dev, python3-venv; pip reachable for the dependency wheels unless --wheels.
# The checkout is not touched: the wheel is built from a copy of the tracked (and untracked, not ignored) files.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$REPO/dist"
PYTHON=python3
WHEELS=""
NODEPS=0
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --no-deps) NODEPS=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

for tool in dpkg-buildpackage dh; do
    command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool missing (apt-get install debhelper dpkg-dev)" >&2; exit 2; }
done

VERSION=$("$PYTHON" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$REPO/pyproject.toml")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/gridedge-$VERSION"
mkdir -p "$WORK/src" "$SRC/wheels"

# 1. a clean copy of the sources (setuptools would leave build/ and *.egg-info in the checkout)
if git -C "$REPO" rev-parse >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
        | tar -C "$REPO" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$WORK/src" -xf -
else
    tar -C "$REPO" --exclude=.venv --exclude=dist --exclude=build -cf - . | tar -C "$WORK/src" -xf -
fi

# 2. wheels: gridedge itself, then every dependency (binary wheels for this Python and architecture)
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$SRC/wheels" "$WORK/src"
if [ "$NODEPS" = 0 ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || { echo "build-deb.sh: --python must be CPython 3.11 (Debian 12's python3)" >&2; exit 2; }
    if [ -n "$WHEELS" ]; then
        cp "$WHEELS"/*.whl "$SRC/wheels/"
    else
        "$PYTHON" -m pip wheel --quiet --wheel-dir "$SRC/wheels" "$SRC"/wheels/gridedge-*.whl
    fi
fi

# 3. the Debian source tree
cp -r "$REPO/packaging/debian" "$SRC/debian"
cp "$REPO/packaging/install-venv" "$SRC/"
mkdir -p "$SRC/systemd" "$SRC/etc" "$SRC/examples/systemd" "$SRC/docs"
cp "$REPO"/systemd/gridedge.service "$REPO"/systemd/gridedge-federation.service "$REPO"/systemd/gridedge-superlink.service "$SRC/systemd/"
cp "$REPO"/systemd/gridedge-fleet-round.service "$REPO"/systemd/gridedge-fleet-round.timer "$SRC/systemd/"
cp "$REPO"/systemd/examples/*.conf "$SRC/examples/systemd/"
mkdir -p "$SRC/nginx" && cp "$REPO/packaging/nginx/gridedge-fleet-proxy.conf" "$SRC/nginx/"
mkdir -p "$SRC/fleet-app" && cp "$REPO/federation/app/pyproject.toml" "$SRC/fleet-app/"
cp "$REPO/config/site.example.yaml" "$SRC/etc/site.yaml"
cp "$REPO/docs/operations.md" "$SRC/docs/"
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
cat > "$SRC/debian/changelog" <<CHANGELOG
gridedge ($VERSION) bookworm; urgency=medium

  * gridedge $VERSION (built by packaging/build-deb.sh).

 -- gridedge maintainers <gridedge@localhost>  $(date -R -u -d "@$EPOCH")
CHANGELOG

# 4. build the binary package (unsigned)
(cd "$SRC" && SOURCE_DATE_EPOCH=$EPOCH dpkg-buildpackage --build=binary -us -uc >"$WORK/build.log" 2>&1) \
    || { cat "$WORK/build.log" >&2; exit 1; }
deb=$(ls "$WORK"/gridedge_"$VERSION"_*.deb)
cp "$deb" "$OUT/"
echo "$OUT/$(basename "$deb")"
