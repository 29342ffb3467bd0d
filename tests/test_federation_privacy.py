"""Privacy accounting: the accountant against the Gaussian mechanism's analytic RDP, the site's ledger,
a site that refuses to send once its budget is spent, and `gridedge federation status` showing it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from fixtures_federation import Site, build_site
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from gridedge.federation import client_app
from gridedge.federation.allowlist import ALLOWED_ARRAYS
from gridedge.federation.contribution import DP_KEYS
from gridedge.federation.privacy import (
    LEDGER_FILE,
    BudgetSpent,
    LedgerEntry,
    PrivacyLedger,
    composed_epsilon,
    gaussian_epsilon,
)
from gridedge.federation.records import to_record
from gridedge.gateway.cli.main import main as gridedge_main


def _cks(rdp: float, order: float, delta: float) -> float:
    """Canonne–Kamath–Steinke (2020) RDP → (ε, δ) conversion, written out."""
    return rdp + math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)


@pytest.mark.parametrize(
    ("z", "releases", "order"), [(1.0, 1, 8.0), (1.0, 30, 3.0), (2.0, 10, 6.0), (0.7, 5, 2.5)]
)
def test_accountant_equals_the_gaussian_mechanisms_analytic_rdp(
    z: float, releases: int, order: float
) -> None:
    # the Gaussian mechanism with noise multiplier z has RDP α/(2z²) at every order α; T releases T·α/(2z²)
    acc = RdpAccountant(orders=[order])
    import dp_accounting

    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), releases))
    want = _cks(releases * order / (2 * z * z), order, 1e-5)
    assert acc.get_epsilon(1e-5) == pytest.approx(want, rel=1e-9)


def test_composed_epsilon_known_values_and_mixed_releases() -> None:
    # published-style figures: z=1 one release 4.73, 30 releases 39.8 at δ=1e-5 (docs/federation.md table)
    assert composed_epsilon([(1.0, 1)], 1e-5) == pytest.approx(4.7285, abs=1e-3)
    assert composed_epsilon([(1.0, 30)], 1e-5) == pytest.approx(39.83, abs=0.02)
    # the closed form kept in privacy.py (a coarser order grid) agrees to < 0.5 %
    for z, t in ((1.0, 1), (1.0, 30), (2.0, 10), (4.0, 30)):
        assert gaussian_epsilon(z, t, 1e-5)[0] == pytest.approx(composed_epsilon([(z, t)], 1e-5), rel=5e-3)
    # Gaussian releases compose like one release with 1/z² = Σ 1/zᵢ²: 10 at z=1 and 40 at z=2 = 20 at z=1
    assert composed_epsilon([(1.0, 10), (2.0, 40)], 1e-5) == pytest.approx(
        composed_epsilon([(1.0, 20)], 1e-5), rel=1e-6
    )
    assert composed_epsilon([(1.0, 3), (0.0, 1)], 1e-5) == math.inf  # anything non-private: ε = ∞
    assert composed_epsilon([], 1e-5) == 0.0


def test_ledger_refuses_what_would_overspend_and_persists(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    led = PrivacyLedger.load(path, delta=1e-5, budget=12.0)
    for r in range(4):
        led.charge([LedgerEntry("classifier-dp", 1.0 * r, 2.0, 1, r + 1)])
    spent = led.spent()
    assert spent == pytest.approx(composed_epsilon([(2.0, 4)], 1e-5)) and spent < 12.0
    with pytest.raises(BudgetSpent, match="budget 12"):
        led.charge([LedgerEntry("prior", 5.0, 0.0)])  # not private: never within a finite budget
    n_ok = 4
    while led.spent([LedgerEntry("classifier-dp", 0.0, 2.0)]) <= 12.0:
        led.charge([LedgerEntry("classifier-dp", 0.0, 2.0)])
        n_ok += 1
    with pytest.raises(BudgetSpent):
        led.charge([LedgerEntry("classifier-dp", 0.0, 2.0)])
    again = PrivacyLedger.load(path)  # as the status command reads it: budget and delta from the file
    assert again.budget == 12.0 and again.delta == 1e-5 and len(again.entries) == n_ok
    assert again.spent() == pytest.approx(composed_epsilon([(2.0, n_ok)], 1e-5)) and again.spent() <= 12.0
    s = again.summary()
    assert s["by_kind"]["classifier-dp"]["releases"] == n_ok and "prior" not in s["by_kind"]
    assert s["remaining"] == pytest.approx(12.0 - again.spent())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return build_site(tmp_path_factory.mktemp("privsite"), 0, 11, 2.0, (1.0, 1.0, 1.0, 1.0), 8)


def _train(site: Site, config: dict, node_config: dict, arrays: dict | None = None) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    content = RecordDict({"config": ConfigRecord(config)})
    if arrays is not None:
        content["arrays"] = to_record(arrays)
    msg = Message(content, dst_node_id=1, message_type="train")
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"db": str(site.db), **node_config},
        state=RecordDict(),
        run_config={},
    )
    return client_app.app(msg, ctx)


def test_site_charges_every_reply_and_refuses_once_its_budget_is_spent(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mdir = tmp_path / "models"
    # no budget: a plain round leaves, and is on the ledger as not private (prior and classifier)
    reply = _train(site, {"server-round": 1}, {"model-dir": str(mdir)})
    assert not reply.has_error()
    led = PrivacyLedger.load(mdir / LEDGER_FILE)
    assert [e.what for e in led.entries] == ["prior", "classifier"] and led.spent() == math.inf

    # a budgeted site: DP classifier rounds (z announced by the node config) until the budget is spent
    mdir = tmp_path / "models-dp"
    nc = {"model-dir": str(mdir), "privacy-budget": "6", "dp-noise-multiplier": "2.0"}
    zeros = {k: np.zeros(ALLOWED_ARRAYS[k].shape) for k in DP_KEYS}
    dp_cfg = {"keys": ",".join(DP_KEYS), KEY_CLIPPING_NORM: 0.3}
    # (in-process the refusal is the exception; the SuperNode turns it into an error reply, no arrays)
    with pytest.raises(BudgetSpent, match="prior"):  # the prior is not private: refused
        _train(site, {"server-round": 1}, nc)
    sent = 0
    with pytest.raises(BudgetSpent, match="classifier-dp would spend"):
        for r in range(1, 40):
            assert not _train(site, {**dp_cfg, "server-round": r}, nc, zeros).has_error()
            sent += 1
    expected = max(k for k in range(40) if composed_epsilon([(2.0, k)], 1e-5) <= 6.0)
    assert sent == expected and sent >= 2, (sent, expected)
    led = PrivacyLedger.load(mdir / LEDGER_FILE)
    assert len(led.entries) == sent and led.spent() == pytest.approx(composed_epsilon([(2.0, sent)], 1e-5))
    # a DP round announcing a larger z in its train config is charged at that z (one more round fits)
    assert composed_epsilon([(2.0, sent), (50.0, 1)], 1e-5) <= 6.0
    assert not _train(
        site, {**dp_cfg, "server-round": 99, "dp-noise-multiplier": 50.0}, nc, zeros
    ).has_error()

    # gridedge federation status shows the spend, text and JSON
    capsys.readouterr()
    assert gridedge_main(["federation", "status", "--model-dir", str(mdir), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["privacy"]
    assert p["budget"] == 6.0 and p["releases"] == sent + 1 and 0 < p["epsilon"] <= 6.0
    assert p["by_kind"]["classifier-dp"]["releases"] == sent + 1
    assert gridedge_main(["federation", "status", "--model-dir", str(mdir)]) == 0
    out = capsys.readouterr().out
    assert f"classifier-dp ×{sent + 1}" in out and "budget 6" in out and f"epsilon={p['epsilon']:.3g}" in out


def test_supernode_passes_the_privacy_budget_and_refuses_a_typo(tmp_path: Path) -> None:
    from test_federation import _site_file

    from gridedge.config.loader import load_config
    from gridedge.federation.cli import SupernodeConfigError, supernode_command

    ok = _site_file(tmp_path, superlink="fleet.example:9092", insecure=True,
                    node_config={"privacy-budget": "8", "dp-noise-multiplier": "2"})  # fmt: skip
    argv, _ = supernode_command(load_config(ok))
    node = argv[argv.index("--node-config") + 1]
    assert 'privacy-budget="8"' in node and 'dp-noise-multiplier="2"' in node
    bad = _site_file(
        tmp_path, superlink="fleet.example:9092", insecure=True, node_config={"privacy-budget": "8eps"}
    )
    with pytest.raises(SupernodeConfigError, match=r"node_config\.privacy-budget"):
        supernode_command(load_config(bad))


def test_export_preview_shows_the_ledger_charge(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert gridedge_main(["federation", "export-preview", "--db", str(site.db)]) == 0
    assert "privacy ledger charge: prior (not private), classifier (not private)" in capsys.readouterr().out
    argv = ["federation", "export-preview", "--db", str(site.db), "--dp-round", "--noise-multiplier", "2", "--json"]
    assert gridedge_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["privacy_charges"] == ["classifier-dp (Gaussian z=2)"]


def test_any_prior_array_alone_is_charged() -> None:
    from gridedge.federation.client_app import releases_of

    shape_only = {"prior.shape_w": np.ones((168, 9))}
    assert [e.what for e in releases_of(shape_only, 0, False, 0.0, 1)] == ["prior"]
    empty = {k: np.zeros(ALLOWED_ARRAYS[k].shape) for k in ALLOWED_ARRAYS}  # a site with nothing yet
    assert releases_of(empty, 0, False, 0.0, 1) == []
