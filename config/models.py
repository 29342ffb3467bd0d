"""The site configuration's pydantic models, one per YAML section.

Unknown keys are errors (a typo must not be silently ignored) and secrets are only accepted by file
reference. Each field's description is the field engineer's reference: ``docs/configuration.md`` is
generated from these models (``python -m gridedge.config.docs``) and a test keeps it in step. Loading a
file, error reporting with file and line, and cross-section checks live in :mod:`gridedge.config.loader`.
"""

from __future__ import annotations

import warnings
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gridedge.config.units import Duration, Size
from gridedge.gateway.calendar import resolve_holidays
from gridedge.gateway.model import Quantity


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing_secret_file(v: str | None) -> str | None:
    return v  # existence is checked at connect time: the file may be provisioned after check-config


class TlsConfig(_Strict):
    """TLS for a client link. All paths are files on the gateway; nothing inline."""

    ca_file: str | None = Field(None, description="CA bundle (PEM) that signs the server certificate")
    cert_file: str | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: str | None = Field(None, description="client private key (PEM) for mutual TLS")
    server_name: str | None = Field(None, description="expected server name if it differs from host")


# --------------------------------------------------------------------------------------------------
# Site, storage
# --------------------------------------------------------------------------------------------------
class SiteSection(_Strict):
    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9_.-]+$", description="site name; used in MQTT topics and federation"
    )
    timezone: str = Field("UTC", description="IANA time zone for hour-of-week slots (DST aware)")
    frequency_hz: Literal[50, 60] = Field(50, description="nominal system frequency")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)") from exc
        return v


class RetentionSection(_Strict):
    raw: Duration = Field(30 * 86400, description="how long raw readings are kept")
    hourly: Duration = Field(
        400 * 86400, description="how long hourly aggregates (min/mean/max/count) are kept"
    )
    events: Duration = Field(400 * 86400, description="how long events, alerts and audit records are kept")


class StorageSection(_Strict):
    path: str = Field("/var/lib/gridedge/gridedge.db", description="SQLite database file")
    retention: RetentionSection = RetentionSection()
    quota: Size = Field(2 * 2**30, description="byte quota for the database; oldest raw readings go first")
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="normal: a power cut may lose the last commits but never corrupts; full: fsync every commit",
    )
    commit_interval: Duration = Field(
        1.0,
        description="readings are committed once per interval while they arrive (a polled reading waits at "
        "most this long before it is durable); events, state saves, flushes and stops commit at once",
    )
    memory_buffer: int = Field(
        2_000_000,
        ge=10_000,
        description="readings held in memory while the disk is full or failing, then counted drops",
    )
    state_save_interval: Duration = Field(
        300.0,
        description="how often the detector state is checkpointed (only changed hour-of-week slots are "
        "rewritten); a crash loses at most this much learning, a clean stop none",
    )


# --------------------------------------------------------------------------------------------------
# Points and devices
# --------------------------------------------------------------------------------------------------
class PointBase(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.:-]+$", description="unique point name")
    quantity: Quantity = Field(..., description="what it measures")
    unit: str = Field("", description="engineering unit after scale/offset (kV, A, MW, Hz, °C)")
    group: str = Field("", description="bay / feeder / transformer / bus the point belongs to")
    parent: str | None = Field(
        None, description="group that feeds this point's group (a feeder's transformer)"
    )
    nominal: float | None = Field(None, description="nominal value (voltage band and per-unit scaling)")
    rating: float | None = Field(None, gt=0, description="rated value (overcurrent rule)")
    weight: float = Field(1.0, ge=0, description="weight in the group's composite score")
    scale: float = Field(1.0, description="engineering value = raw × scale + offset")
    offset: float = 0.0
    deadband: float | None = Field(None, ge=0, description="MQTT: absolute change needed to republish")
    deadband_pct: float | None = Field(
        None, ge=0, description="MQTT: change in % of the last published value"
    )


warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

ModbusType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
ModbusTable = Literal["holding", "input", "coil", "discrete"]


class ModbusPoint(PointBase):
    # "register" shadows ABCMeta.register on the class, which pydantic warns about; the key name is the
    # one field engineers know, so it stays (silenced below, the instance attribute is what we read).
    register: int = Field(..., ge=0, le=65535, description="0-based register / coil address")
    table: ModbusTable = Field(
        "holding", description="holding, input (registers), coil, discrete (input bits)"
    )
    type: ModbusType | None = Field(
        None, description="data type; default uint16 for registers, bool for bits"
    )
    word_order: Literal["big", "little"] = Field(
        "big", description="order of 16-bit words in 32/64-bit values"
    )
    byte_order: Literal["big", "little"] = Field("big", description="order of bytes inside each word")

    @model_validator(mode="after")
    def _type_fits_table(self) -> ModbusPoint:
        bit_table = self.table in ("coil", "discrete")
        if self.type is not None and bit_table != (self.type == "bool"):
            raise ValueError(
                f"type {self.type} does not fit table {self.table} (coils/discrete inputs are bool, registers are not)"
            )
        return self

    @property
    def data_type(self) -> str:
        return self.type or ("bool" if self.table in ("coil", "discrete") else "uint16")

    @property
    def width(self) -> int:
        """Registers occupied."""
        return {"int16": 1, "uint16": 1, "bool": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}[
            self.data_type
        ]


class CoalesceSection(_Strict):
    max_registers: int = Field(
        125, ge=1, le=125, description="largest read request (Modbus limit 125 registers)"
    )
    max_gap: int = Field(8, ge=0, description="unused registers a request may span to merge two ranges")
    max_bits: int = Field(2000, ge=1, le=2000, description="largest coil / discrete input read")


class ModbusWorkarounds(_Strict):
    """Quirks of real devices, named so they are easy to find."""

    pause_after_connect: Duration = Field(0.0, description="wait after connecting before the first request")
    one_request_per_point: bool = Field(
        False, description="disable coalescing for devices that reject ranges"
    )


class DeviceBase(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="unique device name")
    enabled: bool = True
    poll: Duration = Field(1.0, description="poll period (a schedule on the monotonic clock, no drift)")
    timeout: Duration = Field(1.0, description="per-request timeout")
    backoff_initial: Duration = Field(1.0, description="first reconnect delay")
    backoff_max: Duration = Field(60.0, description="reconnect delay cap (exponential backoff with jitter)")
    clock_tolerance: Duration = Field(
        300.0,
        description="a source timestamp further than this from the gateway's clock is flagged clock_skew "
        "(kept as data; scoring uses the receive time; retention always counts from arrival)",
    )

    @field_validator("poll")
    @classmethod
    def _poll_positive(cls, v: float) -> float:
        if v < 0.01:
            raise ValueError("poll must be at least 10ms")
        return v


class ModbusTcpDevice(DeviceBase):
    protocol: Literal["modbus_tcp"]
    host: str = Field(..., description="IP address or host name of the RTU / gateway")
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit / device id")
    client: Literal["native", "pymodbus"] = Field(
        "native",
        description="TCP client: gridedge's lean read-only client (≈ half the CPU per request) or pymodbus'",
    )
    coalesce: CoalesceSection = CoalesceSection()
    workarounds: ModbusWorkarounds = ModbusWorkarounds()
    points: list[ModbusPoint] = Field(..., min_length=1)


class ModbusRtuDevice(DeviceBase):
    protocol: Literal["modbus_rtu"]
    port: str = Field(..., description="serial device, e.g. /dev/ttyS0 or /dev/ttyUSB0")
    baudrate: int = Field(9600, description="bits per second")
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(1, ge=0, le=247)
    coalesce: CoalesceSection = CoalesceSection()
    workarounds: ModbusWorkarounds = ModbusWorkarounds()
    points: list[ModbusPoint] = Field(..., min_length=1)


class Iec61850Point(PointBase):
    ref: str = Field(..., description='object reference, e.g. "IED1LD0/MMXU1.TotW.mag.f"')
    fc: Literal["MX", "ST", "CF", "SP", "SV", "DC", "EX"] = Field("MX", description="functional constraint")


class Iec61850Report(_Strict):
    rcb: str = Field(
        ..., description='report control block reference, e.g. "IED1LD0/LLN0.RP.urcbMeas01" (BR = buffered)'
    )
    integrity_period: Duration = Field(60.0, description="integrity report period (0 = off)")
    gi_on_connect: bool = Field(True, description="general interrogation after every (re)connect")


class Iec61850Device(DeviceBase):
    protocol: Literal["iec61850"]
    host: str
    port: int = Field(102, ge=1, le=65535)
    reports: list[Iec61850Report] = Field(
        default_factory=list, description="reports to enable; points they carry are pushed"
    )
    points: list[Iec61850Point] = Field(..., min_length=1)


Iec104Type = Literal[
    "M_ME_NC_1", "M_ME_TF_1", "M_ME_NA_1", "M_ME_TD_1", "M_ME_NB_1", "M_ME_TE_1",
    "M_SP_NA_1", "M_SP_TB_1", "M_DP_NA_1", "M_DP_TB_1", "M_ST_NA_1", "M_ST_TB_1", "M_IT_NA_1", "M_IT_TB_1",
    "M_BO_NA_1", "M_BO_TB_1",  # bitstring of 32 bits, stored as its unsigned integer value
]  # fmt: skip
# A point receives every type of its kind (with or without time tag), see protocols/iec104_asdu.py.


class Iec104Point(PointBase):
    ioa: int = Field(..., ge=0, le=16777215, description="information object address")
    type: Iec104Type = Field("M_ME_NC_1", description="ASDU type the station sends for this point")
    common_address: int | None = Field(None, ge=1, le=65534, description="station, if not the device's")


class Iec104Device(DeviceBase):
    protocol: Literal["iec104"]
    host: str
    port: int = Field(2404, ge=1, le=65535)
    common_address: int = Field(1, ge=1, le=65534)
    poll: Duration = Field(
        60.0, description="general interrogation period (spontaneous updates arrive between)"
    )
    counter_interrogation: bool = Field(False, description="periodic counter interrogation")
    clock_sync: bool = Field(False, description="send clock synchronisation after connect")
    tls: TlsConfig | None = None
    tls_pinned_cert: str | None = Field(
        None, description="TLS: accept only this station certificate (PEM file); c104 does not check names"
    )
    gi_timeout: Duration = Field(
        10.0, description="how long poll waits for the end (ACT_TERM) of a general interrogation"
    )
    points: list[Iec104Point] = Field(..., min_length=1)


Device = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | Iec61850Device | Iec104Device,
    Field(discriminator="protocol"),
]


# --------------------------------------------------------------------------------------------------
# Scoring, alerts, MQTT, federation, metrics
# --------------------------------------------------------------------------------------------------
class SuppressionWindow(_Strict):
    target: str = Field(..., description="group or point name ('*' for the whole site)")
    start: str = Field(..., description="ISO 8601 start (UTC unless an offset is given)")
    end: str = Field(..., description="ISO 8601 end")
    reason: str = ""


class ScoringSection(_Strict):
    enabled: bool = True
    memory: Duration = Field(30 * 86400, description="memory of the exponentially weighted baselines")
    min_samples: int = Field(20, ge=1, description="samples a slot needs before it leaves observation mode")
    target_false_alerts_per_week: float = Field(
        1.0, gt=0, description="calibration target for adaptive thresholds"
    )
    min_duration: int = Field(2, ge=1, description="consecutive anomalous cycles before an event")
    voltage_band_pct: tuple[float, float] = Field(
        (5.0, 10.0), description="warning / alarm band around nominal voltage"
    )
    frequency_band_hz: tuple[float, float] = Field(
        (0.2, 0.5), description="warning / alarm deviation from nominal"
    )
    stale_after: Duration = Field(
        0.0, description="a point that has not refreshed for this long is stale (0 = 5 polls)"
    )
    suppress: list[SuppressionWindow] = Field(default_factory=list)
    conservative_threshold: float = Field(
        8.0, gt=0, description="composite-score threshold before calibration (tightens to the calibrated one)"
    )
    min_threshold: float = Field(3.0, gt=0, description="lowest threshold calibration may set")
    calibration_period: Duration = Field(
        7 * 86400.0, description="observed time after which the calibrated threshold applies in full"
    )
    recalibrate_every: Duration = Field(6 * 3600.0, description="data time between automatic recalibrations")
    thermal_time_constant: Duration = Field(
        150 * 60.0,
        description="transformer thermal model: top-oil time constant (IEC 60076-7; 150-210 min for ONAN units)",
    )
    thermal_loss_ratio: float = Field(
        5.0, gt=0, description="transformer thermal model: load losses at rated load / no-load losses (R)"
    )
    thermal_oil_exponent: float = Field(
        0.8, gt=0, le=2.0, description="transformer thermal model: top-oil exponent x (0.8 ONAN, 0.9 OF)"
    )
    holidays: list[str] = Field(
        default_factory=list,
        description="public holidays scored as Sundays: ISO dates (2026-12-24) and/or region codes of the"
        " `holidays` package (DE, DE-BY, AT, GB-SCT …); without them an office feeder on a holiday looks like"
        " a load drop",
    )

    @field_validator("holidays")
    @classmethod
    def _known_holidays(cls, v: list[str]) -> list[str]:
        resolve_holidays(v)  # raises HolidayError (a ValueError) naming the entry
        return v


class AlertsSection(_Strict):
    anomaly_cooldown: Duration = Field(3600.0, description="one anomaly alert per group per this period")
    anomaly_per_hour: int = Field(2, ge=0, description="site-wide cap on anomaly alerts per hour")
    trip_cooldown: Duration = Field(1800.0, description="one feeder-trip alert per feeder per this period")
    trip_per_hour: int = Field(3, ge=0, description="site-wide cap on trip alerts per hour")
    sensor_cooldown: Duration = Field(3600.0, description="one sensor-fault alert per point per this period")
    publish_lone_spikes: bool = Field(
        False,
        description="publish a lone one-sample spike (rule `spike`) as an alert; by default it is kept in the"
        " event history and counted (decision `lone_spike`), not sent to operators: an RTU glitch is not"
        " worth waking anyone",
    )


class MqttPointPolicy(_Strict):
    """Publishing policy for the points matched by one key of ``mqtt.points`` (point, group or quantity)."""

    deadband: float | None = Field(
        None, ge=0, description="absolute change (in the unit) that triggers a publish"
    )
    deadband_pct: float | None = Field(
        None, ge=0, le=100, description="change in % of nominal (else of the last published value)"
    )
    integrity_period: Duration | None = Field(None, description="republish at least this often")


class SparkplugConfig(_Strict):
    """Sparkplug B edge node (`mqtt.values: sparkplug`): its own MQTT session beside the JSON one."""

    group_id: str = Field("gridedge", description="Sparkplug group id (first topic level after spBv1.0)")
    edge_node_id: str | None = Field(None, description="Sparkplug edge node id; default site.name")
    client_id: str | None = Field(
        None, description="MQTT client id of the edge node; default <client_id>-spb"
    )


class MqttSection(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="default gridedge-<site>")
    username: str | None = None
    password_file: str | None = Field(None, description="file holding the broker password (never inline)")
    tls: TlsConfig | None = None
    topic_root: str = Field("gridedge/{site}", description="topic prefix; {site} is replaced by site.name")
    keepalive: Duration = 30.0
    publish_values: bool = Field(True, description="publish live point values")
    values: Literal["batch", "per_point", "sparkplug"] = Field(
        "batch",
        description="live value payloads: batch = one JSON message per device (or group) and poll cycle on "
        "values/<name>; per_point = one message per point on point/<name>; sparkplug = Sparkplug B DDATA",
    )
    batch_by: Literal["device", "group"] = Field(
        "device",
        description="what one batch message (or Sparkplug device) holds: a device's or a group's points",
    )
    values_backlog: int = Field(
        64,
        ge=1,
        description="value messages handed to the socket but not yet written before new values wait; a "
        "waiting point keeps only its newest value (latest wins, overwritten ones are counted as conflated)",
    )
    sparkplug: SparkplugConfig = Field(
        default_factory=SparkplugConfig, description="Sparkplug B edge node (with values: sparkplug)"
    )
    values_in_outbox: bool = Field(
        False,
        description="queue live values in the outbox while the broker is down (per-point messages, "
        "in order, no conflation; overrides values)",
    )
    integrity_period: Duration = Field(
        300.0, description="republish a point at least this often despite deadband"
    )
    outbox_quota: int = Field(
        100_000, ge=100, description="messages the outbox may hold; values are dropped first"
    )
    command_users: list[str] = Field(
        default_factory=list, description="broker users allowed to send cmd/# (empty = commands off)"
    )
    deadband: float = Field(0.0, ge=0, description="default absolute deadband for point values")
    deadband_pct: float = Field(0.0, ge=0, le=100, description="default percent deadband for point values")
    points: dict[str, MqttPointPolicy] = Field(
        default_factory=dict,
        description="per point/group/quantity overrides of deadband, deadband_pct, integrity_period "
        "(point name wins over group, group over quantity)",
    )
    score_deadband: float = Field(
        0.5,
        ge=0,
        description="republish a group's score when it moved by at least this much (or its state changed, "
        "or integrity_period passed); 0 = every status cycle",
    )
    max_inflight: int = Field(20, ge=1, le=65535, description="QoS 1 messages in flight before a PUBACK")
    reconnect_min: Duration = Field(0.5, description="first reconnect delay (doubles, with jitter)")
    reconnect_max: Duration = Field(30.0, description="longest reconnect delay")
    outbox_synchronous: Literal["full", "normal"] = Field(
        "full",
        description="SQLite synchronous mode of the outbox: full survives power loss, normal is faster",
    )

    password: str | None = Field(
        None, description="not accepted: secrets only by file reference (password_file)"
    )

    @field_validator("password")
    @classmethod
    def _no_inline_secret(cls, v: str | None) -> None:
        if v is not None:
            raise ValueError(
                "secrets are not accepted inline: put the password in a file and set password_file"
            )
        return None

    @model_validator(mode="after")
    def _outbox_values_are_json(self) -> MqttSection:
        # the outbox replays per-point JSON messages; a Sparkplug host would never see them
        if self.values_in_outbox and self.values == "sparkplug":
            raise ValueError(
                "values_in_outbox queues per-point JSON values: it cannot be used with values: sparkplug"
            )
        return self


def _node_config_strings(v: Any) -> Any:
    """Flower node config values as strings (YAML numbers and booleans included)."""
    if isinstance(v, dict):
        return {k: str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}
    return v


class FederationSection(_Strict):
    enabled: bool = False
    model_dir: str = Field("/var/lib/gridedge/models", description="where pulled global models are kept")
    use_prior: bool = Field(
        True, description="start cold slots from the fleet baseline prior when one is present"
    )
    superlink: str | None = Field(
        None,
        description="HOST:PORT of the control centre's Flower SuperLink (Fleet API); "
        "needed by `gridedge federation supernode`",
    )
    root_certificates: str | None = Field(
        None,
        description="file: PEM CA certificate(s) that signed the SuperLink's TLS certificate "
        "(TLS is required unless insecure)",
    )
    auth_private_key: str | None = Field(
        None,
        description="file: this SuperNode's EC private key (OpenSSH format) for SuperNode authentication; "
        "a path, never the key itself; checked when the SuperNode starts",
    )
    insecure: bool = Field(
        False, description="plain-text gRPC to the SuperLink (lab use only; no TLS, no auth)"
    )
    dp: bool = Field(
        False,
        description="this site's event classifier leaves only in differentially private rounds "
        "(clipped here, noised by the server); other rounds get the prior only",
    )
    share_centre_shapes: bool = Field(
        True,
        description="send this site's sums per candidate shape of the prior (prior.cshape_w, cspread_w, "
        "cweight: a centre only one of its points is nearest to carries that point's weekly profile); "
        "false sends zeros there, the fleet-average prior still leaves and the fleet's prior, centres "
        "included, still arrives",
    )
    node_config: Annotated[dict[str, str], BeforeValidator(_node_config_strings)] = Field(
        default_factory=dict,
        description="extra Flower node config for the ClientApp (db defaults to storage.path, "
        "model-dir to federation.model_dir, dp to federation.dp, centre-shapes to "
        "federation.share_centre_shapes)",
    )

    @field_validator("auth_private_key", "root_certificates")
    @classmethod
    def _file_reference(cls, v: str | None) -> str | None:
        # secrets and certificates are referenced by path: inline PEM text does not belong in a site file
        if v is not None and ("-----BEGIN" in v or "\n" in v):
            raise ValueError("give the path of a file, not its contents")
        return v


class MetricsSection(_Strict):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="bind address (loopback by default)")
    port: int = Field(9108, ge=0, le=65535, description="0 picks a free port")


class LoggingSection(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class SiteConfig(_Strict):
    """The whole site file."""

    site: SiteSection
    storage: StorageSection = StorageSection()
    devices: list[Device] = Field(..., min_length=1)
    scoring: ScoringSection = ScoringSection()
    alerts: AlertsSection = AlertsSection()
    mqtt: MqttSection | None = None
    federation: FederationSection = FederationSection()
    metrics: MetricsSection = MetricsSection()
    logging: LoggingSection = LoggingSection()
