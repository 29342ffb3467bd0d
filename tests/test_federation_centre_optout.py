"""``federation.share_centre_shapes: false``: a site keeps its per-centre prior sums to itself.

- the ClientApp (in-process, as the SuperNode's ClientApp process calls it): with node config
  ``centre-shapes=false`` the reply's ``prior.cshape_w / cspread_w / cweight`` are zeros and every
  other array and metric is what the sharing reply holds; the ledger is still charged for the prior;
- the site file's key reaches the SuperNode's node config, and ``export-preview -c`` shows the zeros;
- a real SuperLink round with two real SuperNodes, one opted out (slow): what crossed is zeros from that
  site only; the fleet's centres are the sharing site's alone, its average prior is both sites'; the
  opted-out site still receives the whole global model, centres included.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_federation import FlowerFleet, Site, build_sites
from test_federation import _call_client, _captured_messages, _site_file

from gridedge.federation.allowlist import ALLOWED_ARRAYS
from gridedge.federation.contribution import CENTRE_KEYS, site_contribution
from gridedge.federation.models import list_models
from gridedge.federation.prior import finalise_prior, global_centres
from gridedge.federation.privacy import LEDGER_FILE, PrivacyLedger
from gridedge.federation.records import from_record
from gridedge.gateway.cli.main import main as gridedge_main


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Site]:
    return build_sites(tmp_path_factory.mktemp("sites"))[:2]


def _reply(site: Site, node_config: dict) -> tuple[dict[str, np.ndarray], dict]:
    msg = _call_client(site, {"server-round": 1}, node_config=node_config, mods=True)
    return from_record(msg.content.array_records["arrays"]), dict(msg.content.metric_records["metrics"])


def test_clientapp_sends_zero_centre_sums_and_the_rest_unchanged(sites: list[Site], tmp_path: Path) -> None:
    shared, m_shared = _reply(sites[0], {"model-dir": str(tmp_path / "a")})
    kept, m_kept = _reply(sites[0], {"model-dir": str(tmp_path / "b"), "centre-shapes": "false"})
    assert set(shared) == set(kept) == set(ALLOWED_ARRAYS)  # same names and shapes: the server accepts it
    for k in CENTRE_KEYS:
        assert np.any(shared[k]) and not np.any(kept[k]), k
    for k in set(ALLOWED_ARRAYS) - set(CENTRE_KEYS):
        assert np.array_equal(shared[k], kept[k]), k
    assert float(kept["prior.weight"].sum()) > 0 and m_kept == m_shared
    # the fleet-average prior still left, and the ledger says so
    kinds = [e.what for e in PrivacyLedger.load(tmp_path / "b" / LEDGER_FILE).entries]
    assert "prior" in kinds, kinds


def test_site_file_key_reaches_the_supernode_and_export_preview(
    sites: list[Site], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gridedge.config.loader import load_config
    from gridedge.federation.cli import supernode_command

    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    optout = _site_file(tmp_path, superlink="fleet.example:9092", root_certificates=str(ca),
                        share_centre_shapes=False)  # fmt: skip
    argv, _ = supernode_command(load_config(optout))
    assert 'centre-shapes="false"' in argv[argv.index("--node-config") + 1]
    (tmp_path / "d").mkdir()
    default = _site_file(tmp_path / "d", superlink="fleet.example:9092", root_certificates=str(ca))
    argv, _ = supernode_command(load_config(default))
    assert 'centre-shapes="true"' in argv[argv.index("--node-config") + 1]
    # export-preview -c takes the choice from the site file (its database is the site's here)
    text = optout.read_text().replace(str(tmp_path / "gw.db"), str(sites[0].db))
    optout.write_text(text)
    capsys.readouterr()
    assert gridedge_main(["federation", "export-preview", "-c", str(optout), "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)["arrays"]
    assert gridedge_main(["federation", "export-preview", "--db", str(sites[0].db), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)["arrays"]
    for k in CENTRE_KEYS:
        assert not np.any(preview[k]["values"]) and np.any(full[k]["values"]), k
    assert preview["prior.weight"]["values"] == full["prior.weight"]["values"]
    assert gridedge_main(["federation", "export-preview", "--db", str(sites[0].db), "--no-centre-shapes",
                          "--json"]) == 0  # fmt: skip
    assert not np.any(json.loads(capsys.readouterr().out)["arrays"]["prior.cweight"]["values"])


@pytest.mark.slow
def test_fleet_round_with_a_site_that_keeps_its_centre_shapes(sites: list[Site], tmp_path: Path) -> None:
    cap = tmp_path / "capture"
    fleet = FlowerFleet(home=tmp_path / "flwr", sites=sites, capture_dir=cap)
    models = tmp_path / "models"
    with fleet.running():
        fleet.start_superlink()
        fleet.start_supernode(0)
        fleet.start_supernode(1, node_config='centre-shapes="false"')
        fleet.run({"num-rounds": 1, "min-nodes": 2, "model-dir": str(models)})
    rounds = list_models(models)
    assert [m["sites"] for m in rounds] == [2], rounds
    glob = dict(np.load(rounds[0]["path"]))

    # what crossed: the opted-out site's train reply (recognised by its own prior sums) has zero centre sums
    c0, m0 = site_contribution(sites[0].db, None)
    c1, m1 = site_contribution(sites[1].db, None)
    train = [m for m in _captured_messages(cap) if m.metadata.message_type == "train"]
    replies = [from_record(m.content.array_records["arrays"]) for m in train]
    assert len(replies) == 2
    by_site = {}
    for r in replies:
        i = next(
            i for i, c in enumerate((c0, c1)) if np.allclose(r["prior.weight"], c["prior.weight"], rtol=1e-12)
        )
        by_site[i] = r
    assert sorted(by_site) == [0, 1]
    for k in CENTRE_KEYS:
        assert not np.any(by_site[1][k]) and np.allclose(by_site[0][k], c0[k], rtol=1e-12), k

    # the fleet's centres are the sharing site's alone; the average prior pools both sites
    want = global_centres(c0)
    got = global_centres(glob)
    assert want is not None and got is not None
    np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True)
    assert not np.allclose(np.nan_to_num(global_centres(c1)), np.nan_to_num(want))  # site 1's would differ
    n0, n1 = m0["num-examples"], m1["num-examples"]
    pooled = finalise_prior(
        *(c0[k] * n0 + c1[k] * n1 for k in ("prior.shape_w", "prior.spread_w", "prior.weight"))
    )
    ours = finalise_prior(glob["prior.shape_w"], glob["prior.spread_w"], glob["prior.weight"])
    np.testing.assert_allclose(ours["shape"], pooled["shape"], rtol=1e-9, equal_nan=True)

    # the opted-out site still received the whole global model, centres included
    have = {m["version"]: m for m in list_models(sites[1].model_dir)}
    assert rounds[0]["version"] in have
    received = dict(np.load(have[rounds[0]["version"]]["path"]))
    assert float(received["prior.cweight"].sum()) > 0
    np.testing.assert_allclose(global_centres(received), want, rtol=1e-9, equal_nan=True)
