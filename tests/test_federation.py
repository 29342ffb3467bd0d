"""Federation: allow-list, prior arithmetic, and a real SuperLink + 3 SuperNodes on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fixtures_federation import T0, FlowerFleet, Site, build_sites
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.proto.fleet_pb2 import PushMessagesRequest
from flwr.proto.message_pb2 import PushObjectRequest
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from gridedge.federation import client_app
from gridedge.federation.allowlist import ALLOWED_ARRAYS, ExportRefused, check_arrays
from gridedge.federation.contribution import DP_KEYS, site_contribution
from gridedge.federation.models import latest_global, list_models, load_latest_classifier, load_latest_model
from gridedge.federation.records import from_record, to_record
from gridedge.gateway.model import QUANTITIES
from gridedge.scoring.detector import Detector


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Site]:
    return build_sites(tmp_path_factory.mktemp("sites"))


def independent_prior(sites: list[Site]) -> dict[str, np.ndarray]:
    """The fleet prior written out longhand (loops, no shared helper): count-weighted per slot × quantity."""
    Q = len(QUANTITIES)
    num = np.zeros((168, Q))
    num_s = np.zeros((168, Q))
    den = np.zeros((168, Q))
    for s in sites:
        for p, pt in enumerate(s.points):
            q = QUANTITIES.index(str(pt.quantity))
            if q > 5:  # status, counter, tap position: no baselines
                continue
            n, m, v = s.n[:, p], s.mean[:, p], s.var[:, p]
            ok = n >= 3
            if not ok.any():
                continue
            level = np.sum(n[ok] * m[ok]) / np.sum(n[ok])
            if level <= 0 or np.any(m[ok] <= 0.05 * level):
                continue
            for slot in np.flatnonzero(ok):
                num[slot, q] += n[slot] * m[slot] / level
                num_s[slot, q] += n[slot] * np.sqrt(v[slot]) / m[slot]
                den[slot, q] += n[slot]
    with np.errstate(invalid="ignore"):
        return {
            "shape": np.where(den > 0, num / den, np.nan),
            "spread": np.where(den > 0, num_s / den, np.nan),
        }


def _call_client(
    site: Site, config: dict, arrays: dict | None = None, node_config: dict | None = None, mods: bool = False
) -> Message:
    """Call the ClientApp's train handler in-process (``mods``: through the app with its mods), as the
    SuperNode's ClientApp process would."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    content = RecordDict({"config": ConfigRecord(config)})
    if arrays is not None:
        content["arrays"] = to_record(arrays)
    msg = Message(content, dst_node_id=1, message_type="train")
    nc = {"db": str(site.db), **(node_config or {})}
    ctx = Context(run_id=1, node_id=1, node_config=nc, state=RecordDict(), run_config={})
    return client_app.app(msg, ctx) if mods else client_app.train(msg, ctx)


def test_allowlist_rejects_unknown_names_shapes_dtypes() -> None:
    good = {k: np.zeros(s.shape) for k, s in ALLOWED_ARRAYS.items()}
    check_arrays(good)
    with pytest.raises(ExportRefused, match="not on the allow-list"):
        check_arrays({**good, "readings.F1_I": np.zeros(10)})
    with pytest.raises(ExportRefused, match="shape"):
        check_arrays({**good, "prior.weight": np.zeros((168, 3))})
    with pytest.raises(ExportRefused, match="dtype"):
        check_arrays({**good, "clf.weight": np.zeros(1, np.float32)})
    with pytest.raises(ExportRefused, match="NaN"):
        check_arrays({**good, "clf.weight": np.array([np.nan])})


def test_clientapp_refuses_a_non_allowed_key(sites: list[Site]) -> None:
    with pytest.raises(ExportRefused, match=r"raw\.readings"):
        _call_client(sites[0], {"keys": "prior.weight,raw.readings", "server-round": 1})
    reply = _call_client(sites[0], {"keys": "prior.weight", "server-round": 1})
    assert list(reply.content.array_records["arrays"].keys()) == ["prior.weight"]
    full = _call_client(sites[0], {"server-round": 1})
    assert set(full.content.array_records["arrays"].keys()) == set(ALLOWED_ARRAYS)


def test_dp_round_reply_is_clipped_and_a_dp_site_withholds_its_classifier(
    sites: list[Site], capsys: pytest.CaptureFixture[str]
) -> None:
    zeros = {k: np.zeros(ALLOWED_ARRAYS[k].shape) for k in DP_KEYS}
    cfg = {"keys": ",".join(DP_KEYS), "server-round": 1, KEY_CLIPPING_NORM: 0.05}
    reply = _call_client(sites[0], cfg, zeros, mods=True)
    arrays = from_record(reply.content.array_records["arrays"])
    assert sorted(arrays) == sorted(DP_KEYS)
    norm = float(np.sqrt(sum(np.sum(a**2) for a in arrays.values())))  # the update (global was zero)
    unclipped = site_contribution(sites[0].db, zeros, classifier="uniform")[0]
    assert float(np.sqrt(sum(np.sum(a**2) for a in unclipped.values()))) > 0.05
    assert norm == pytest.approx(0.05, rel=1e-9)  # clipped by Flower's fixedclipping_mod
    assert reply.content.metric_records["metrics"]["num-examples"] == 1.0
    with pytest.raises(ExportRefused, match="DP round"):
        _call_client(sites[0], {**cfg, "keys": "prior.weight"}, zeros, mods=True)
    # a site whose node config demands DP sends the prior but no classifier in a non-DP round
    plain = _call_client(sites[0], {"server-round": 1}, node_config={"dp": "true"}, mods=True)
    got = from_record(plain.content.array_records["arrays"])
    assert float(got["clf.weight"][0]) == 0.0 and not got["clf.coef_w"].any()
    assert float(got["prior.weight"].sum()) > 0
    # the auditor's view of both (export-preview runs the same function)
    from gridedge.gateway.cli.main import main as gridedge_main

    capsys.readouterr()
    assert (
        gridedge_main(["federation", "export-preview", "--db", str(sites[0].db), "--dp-round", "--json"]) == 0
    )
    preview = json.loads(capsys.readouterr().out)
    assert sorted(preview["arrays"]) == sorted(DP_KEYS) and preview["metrics"]["num-examples"] == 1.0
    np.testing.assert_allclose(preview["arrays"]["clf.coef_w"]["values"], unclipped["clf.coef_w"])
    assert (
        gridedge_main(["federation", "export-preview", "--db", str(sites[0].db), "--site-dp", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["arrays"]["clf.weight"]["values"] == [0.0]


def test_client_opens_the_store_read_only(sites: list[Site]) -> None:
    before = sites[1].db.stat().st_mtime_ns, sites[1].db.read_bytes()
    site_contribution(sites[1].db)
    assert (sites[1].db.stat().st_mtime_ns, sites[1].db.read_bytes()) == before
    from gridedge.federation.reader import open_site

    conn = open_site(sites[1].db)
    with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
        conn.execute("DELETE FROM events")
    conn.close()


def _captured_messages(cap: Path) -> list[Message]:
    objs: dict[str, bytes] = {}
    ids: list[str] = []
    for f in sorted(cap.iterdir()):
        b = f.read_bytes()
        if f.name.endswith("obj.bin"):
            r = PushObjectRequest.FromString(b)
            objs[r.object_id] = r.object_content
        else:
            ids += [m.metadata.message_id for m in PushMessagesRequest.FromString(b).messages_list]
    return [inflate_object_from_contents(i, dict(objs), keep_object_contents=True) for i in ids]


def _contains_series(flat: np.ndarray, series: np.ndarray, width: int = 4) -> bool:
    """True if ``width`` consecutive readings of any stored series appear consecutively in ``flat``."""
    if flat.size < width:
        return bool(flat.size and any(np.isin(flat, series[:, j]).all() for j in range(series.shape[1])))
    windows = {tuple(np.round(flat[i : i + width], 9)) for i in range(flat.size - width + 1)}
    for j in range(series.shape[1]):
        col = series[:, j]
        col = col[np.isfinite(col)]
        for i in range(col.size - width + 1):
            if tuple(np.round(col[i : i + width], 9)) in windows:
                return True
    return False


def test_fleet_rounds_weighted_mean_and_nothing_raw_crosses(sites: list[Site], tmp_path: Path) -> None:
    cap = tmp_path / "capture"
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, capture_dir=cap)
    server_models = tmp_path / "server-models"
    with fleet.running():
        fleet.start_superlink()
        for i in range(3):
            fleet.start_supernode(i)
        fleet.run({"num-rounds": 2, "min-nodes": 3, "model-dir": str(server_models)})

    # -- rounds completed; every site holds the same versioned global model -------------------------
    models = list_models(server_models)
    assert [m["round"] for m in models] == [1, 2], models
    assert all(m["sites"] == 3 for m in models)
    for s in sites:
        assert [m["version"] for m in list_models(s.model_dir)] == [m["version"] for m in models]

    # -- the global prior equals the count-weighted mean computed independently -------------------
    prior, version = load_latest_model(server_models)
    assert version == models[-1]["version"]
    ref = independent_prior(sites)
    assert np.array_equal(np.isnan(prior["shape"]), np.isnan(ref["shape"]))
    np.testing.assert_allclose(prior["shape"], ref["shape"], rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(prior["spread"], ref["spread"], rtol=1e-9, equal_nan=True)
    assert (
        np.nanmin(prior["shape"][:, QUANTITIES.index("current")])
        < 0.9
        < 1.1
        < np.nanmax(prior["shape"][:, QUANTITIES.index("current")])
    )  # a real daily shape, not a flat line

    # -- the fleet's class counts came back (clf.class_w): the sites' labels counted independently ---
    round1 = np.load(models[0]["path"])
    labels = [lab for s in sites for lab in s.labels]
    counts = np.array([labels.count(c) for c in ("incident", "sensor_fault", "false_alarm")], np.float64)
    np.testing.assert_allclose(round1["clf.class_w"] / round1["clf.class_w"].sum(), counts / counts.sum())

    # -- the global classifier equals the label-weight-weighted mean of the sites' round-2 models ----
    # (a site's weight is the class-balanced weight of its labels, from those fleet counts; a site
    # without labels weighs 0)
    contribs = [site_contribution(s.db, dict(round1)) for s in sites]
    weights = np.array([float(a["clf.weight"][0]) * m["num-examples"] for a, m in contribs])
    assert weights[0] > 0 and weights[-1] == 0.0 and sum(m["labelled"] for _, m in contribs) == 20
    coefs = [a["clf.coef_w"] / a["clf.weight"][0] if a["clf.weight"][0] > 0 else 0.0 for a, _ in contribs]
    want = sum(w * c for w, c in zip(weights, coefs, strict=True)) / weights.sum()
    clf, cversion = load_latest_classifier(server_models)
    assert cversion == version
    np.testing.assert_allclose(clf["coef"], want, rtol=1e-9, atol=1e-12)

    # -- nothing raw crossed: every message the SuperLink received holds allow-listed arrays only ---
    msgs = _captured_messages(cap)
    train = [m for m in msgs if m.metadata.message_type == "train"]
    assert len(train) == 6 and len(msgs) == 12
    for m in msgs:
        assert not m.has_error()
        arrays = {k: v for rec in m.content.array_records.values() for k, v in from_record(rec).items()}
        check_arrays(arrays)
        if m.metadata.message_type == "train":
            assert set(arrays) == set(ALLOWED_ARRAYS)
        for mr in m.content.metric_records.values():
            assert set(mr) <= {"num-examples", "labelled", "points", "correct", "evaluated"}
        for a in arrays.values():
            flat = np.asarray(a, np.float64).ravel()
            for s in sites:
                assert not _contains_series(flat, s.series), "a stored reading series crossed"

    # -- the daemon side: a brand-new site starts from the prior instead of observing -------------
    new = sites[0]
    det = Detector(new.points, timezone="Europe/Berlin")
    det.apply_prior(prior, version)
    from gridedge.protocols.simulators.substation import SubstationModel

    # four weeks later, in hours of the week the fleet has seen (the test sites hold 2-4 days each)
    t0 = T0 + 4 * 604800
    ts, values = SubstationModel(seed=99).history(t0, t0 + 6 * 3600, 300.0)
    det.warm(ts, values)
    arrays, meta = det.state_arrays()
    cur = new.points.index_of("F1_I")
    known = int(np.sum(np.isfinite(prior["shape"][:, QUANTITIES.index("current")])))
    assert known >= 48
    # after 6 hours every hour of the week the fleet knows is out of observation mode (min_samples 20)
    assert np.sum(arrays["n"][:, cur] >= 20) >= known
    assert meta["prior_version"] == version


def test_latest_global_none_for_empty_dir(tmp_path: Path) -> None:
    assert latest_global(tmp_path) is None
    assert load_latest_model(tmp_path) is None and load_latest_classifier(tmp_path) is None


def _site_file(tmp_path: Path, **fed: object) -> Path:
    import yaml

    doc = {
        "site": {"name": "s", "timezone": "Europe/Berlin"},
        "storage": {"path": str(tmp_path / "gw.db")},
        "devices": [{"name": "rtu", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": 1502, "points": [
            {"name": "F1_I", "quantity": "current", "group": "F1", "register": 0, "type": "float32"}]}],
        "federation": {"enabled": True, "model_dir": str(tmp_path / "models"), **fed},
    }  # fmt: skip
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_supernode_command_from_the_site_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridedge.config.loader import ConfigError, load_config
    from gridedge.federation.cli import OFFLINE_ENV, SupernodeConfigError, supernode_command
    from gridedge.gateway.cli.main import main as gridedge_main

    ca, key = tmp_path / "ca.pem", tmp_path / "node.key"
    f = _site_file(tmp_path, superlink="fleet.example:9092", root_certificates=str(ca),
                   auth_private_key=str(key), dp=True, node_config={"steps": 2, "db": "/srv/other.db"})  # fmt: skip
    cfg = load_config(f)  # files are not checked at load time ...
    with pytest.raises(SupernodeConfigError, match="root_certificates: no file"):
        supernode_command(cfg)  # ... but when the SuperNode is about to start
    ca.write_text("CA")
    with pytest.raises(SupernodeConfigError, match="auth_private_key: no file"):
        supernode_command(cfg)
    assert gridedge_main(["federation", "supernode", "-c", str(f), "--dry-run"]) == 2
    key.write_text("KEY")
    argv, env = supernode_command(cfg, extra_args=("--port", "9999"))
    assert OFFLINE_ENV == {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    assert OFFLINE_ENV.items() <= env.items()
    # flower-supernode finds flower-superexec by name: its bin directory is on PATH
    assert str(Path(argv[0]).parent) in env.get("PATH", os.environ["PATH"]).split(os.pathsep)
    assert argv[0].endswith("flower-supernode") and "--insecure" not in argv
    assert argv[argv.index("--superlink") + 1] == "fleet.example:9092"
    assert argv[argv.index("--root-certificates") + 1] == str(ca)
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(key)
    node = argv[argv.index("--node-config") + 1]
    assert f'model-dir="{tmp_path / "models"}"' in node and 'dp="true"' in node and 'steps="2"' in node
    assert 'db="/srv/other.db"' in node  # node_config overrides the storage path
    assert argv[-2:] == ["--port", "9999"]
    capsys.readouterr()
    assert gridedge_main(["federation", "supernode", "-c", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 ") and "--superlink" in out
    # no address, or a key pasted inline instead of a path: clear errors
    with pytest.raises(SupernodeConfigError, match=r"federation\.superlink"):
        supernode_command(load_config(_site_file(tmp_path)))
    with pytest.raises(ConfigError, match="path of a file"):
        load_config(_site_file(tmp_path, auth_private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nabc"))


def test_dp_budget_is_sound_against_the_exact_gaussian_mechanism() -> None:
    """One Gaussian release (noise multiplier z): the exact privacy profile (Balle & Wang 2018) is
    δ(ε) = Φ(−zε + 1/(2z)) − e^ε·Φ(−zε − 1/(2z)). The RDP-accounted ε must be sound (δ(ε) ≤ δ) and not
    loose by more than a small factor; T releases of z equal one release of z/√T (Gaussian composition)."""
    import math

    from gridedge.federation.privacy import DpSettings, gaussian_epsilon

    def phi(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    def delta_exact(eps: float, z: float) -> float:
        return phi(-z * eps + 1 / (2 * z)) - math.exp(eps) * phi(-z * eps - 1 / (2 * z))

    def eps_exact(z: float, delta: float) -> float:
        lo, hi = 0.0, 100.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if delta_exact(mid, z) > delta else (lo, mid)
        return hi

    for z in (0.7, 1.0, 2.0, 4.0):
        for releases in (1, 10, 30):
            eps, _ = gaussian_epsilon(z, releases, 1e-5)
            exact = eps_exact(z / math.sqrt(releases), 1e-5)
            assert delta_exact(eps, z / math.sqrt(releases)) <= 1e-5 * (1 + 1e-6)
            assert exact <= eps <= 1.15 * exact, (z, releases, eps, exact)
    b = DpSettings(noise_multiplier=1.0, clipping_norm=0.3).budget(30)
    assert b["epsilon_replace_one"] > b["epsilon"] > 0 and DpSettings().noise_std(3) == pytest.approx(0.1)
