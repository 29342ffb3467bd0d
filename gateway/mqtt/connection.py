"""A paho client set up from ``mqtt.*``: protocol, inflight window, credentials by file, TLS.

The JSON bridge and the Sparkplug edge node open one session each with the same broker settings; building
both clients here keeps the credential and TLS rules in one place.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt

from gridedge.config.models import MqttSection

__all__ = ["make_paho_client"]

log = logging.getLogger("gridedge.mqtt")


def make_paho_client(cfg: MqttSection, client_id: str) -> mqtt.Client:
    """An MQTT 5 client (paho callback API 2) with ``cfg``'s inflight window, credentials and TLS."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(cfg.max_inflight)
    c.max_queued_messages_set(0)
    if cfg.password_file and not cfg.username:
        raise ValueError("mqtt.password_file needs mqtt.username")
    if cfg.username:
        pw = None
        if cfg.password_file:
            pw = Path(cfg.password_file).read_text().rstrip("\r\n")
        c.username_pw_set(cfg.username, pw)
    tls = cfg.tls
    if tls is not None:
        if tls.server_name:
            log.warning("event=mqtt_tls_server_name_ignored name=%s host=%s", tls.server_name, cfg.host)
        c.tls_set(
            ca_certs=tls.ca_file,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return c
