#!/usr/bin/env bash
# The demo substation end to end: real Modbus / IEC 61850 / IEC 104 servers, the gateway polling them,
# incidents injected, a summary at the end. Extra arguments go to `gridedge demo` (see --help).
source "$(dirname "$0")/_env.sh"
apt_install mosquitto:/usr/sbin/mosquitto
exec gridedge demo "$@"
