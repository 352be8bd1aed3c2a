"""One reader for runs tables: a registry, its CSV export and any CSV give every command the same N, D and loss."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lmscale.cli import main
from lmscale.errors import DataError
from lmscale.scaling.emergence import from_records, read_scale_metric_csv
from lmscale.scaling.registry import Registry, RunRecord
from lmscale.scaling.report import build_report
from lmscale.scaling.runs import RunsTable, candidates, read_runs, read_runs_csv

# Hoffmann et al. 2022, eq. 10, in non-embedding parameters; the embedding adds a fixed count, so
# a fit on the total count finds a different law.
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
EMBEDDING = 2_000_000


def _registry(path):
    reg = Registry(path)
    h = HOFFMANN
    rng = np.random.default_rng(0)
    for i, n in enumerate(np.geomspace(1e6, 1e8, 5)):
        for j, d in enumerate(np.geomspace(2e7, 2e9, 5)):
            loss = (h["E"] + h["A"] / n ** h["alpha"] + h["B"] / d ** h["beta"]) * np.exp(rng.normal(0, 0.002))
            reg.add_run(RunRecord(run_id=f"r{i}{j}", name=f"r{i}{j}", sweep="s", status="finished",
                                  params_non_embedding=int(n), params_total=int(n) + EMBEDDING,
                                  params_embedding=EMBEDDING, tokens=float(d), flops=6.0 * int(n) * d,
                                  final_val_loss=float(loss), best_val_loss=float(loss) - 0.01))
    reg.add_run(RunRecord(run_id="p", name="pending-run", sweep="s", params_non_embedding=10**6,
                          params_total=10**6 + EMBEDDING, tokens=1e7))
    reg.add_run(RunRecord(run_id="f", name="failed-run", sweep="s", status="failed", error="boom"))
    return reg


@pytest.fixture
def export(tmp_path):
    reg = _registry(tmp_path / "registry.sqlite")
    csv = tmp_path / "runs.csv"
    reg.to_csv(csv)
    reg.close()
    return tmp_path / "registry.sqlite", csv


def test_fit_and_report_fit_the_same_n_on_an_export_with_both_parameter_counts(export, capsys):
    _, csv = export
    header = csv.read_text().splitlines()[0].split(",")
    assert "params_total" in header and "params_non_embedding" in header
    assert main(["fit", str(csv), "--grid", "coarse", "--bootstrap", "0", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["params"]
    report = build_report(csv, None, holdout=None, n_bootstrap=0, grid="coarse")["fit"]["params"]
    assert report == pytest.approx(fit, rel=1e-9)
    assert fit["alpha"] == pytest.approx(HOFFMANN["alpha"], rel=0.05)  # the non-embedding law
    assert main(["fit", str(csv), "--grid", "coarse", "--bootstrap", "0", "--json", "--n-col", "params_total"]) == 0
    total = json.loads(capsys.readouterr().out)["params"]
    assert total["alpha"] != pytest.approx(fit["alpha"], rel=0.05)


def test_registry_and_its_export_read_the_same(export):
    db, csv = export
    a, b = read_runs(db), read_runs(csv)
    registry_columns = {"N": "params_non_embedding", "D": "tokens", "C": "flops", "loss": "final_val_loss"}
    assert a.columns == b.columns == registry_columns
    assert a.names == b.names and len(a) == 25  # pending and failed runs are left out
    for q in ("N", "D", "C", "loss"):
        np.testing.assert_allclose(a.values[q], b.values[q], rtol=1e-12)
    t = RunsTable.from_columns(b)
    assert t.n_kind == "non-embedding" and len(t) == 25
    total = read_runs(csv, params="total")
    assert total.columns["N"] == "params_total" and RunsTable.from_columns(total).n_kind == "total"
    np.testing.assert_allclose(total.values["N"], b.values["N"] + EMBEDDING)
    em_db = from_records(Registry(db).runs(), metric="best_val_loss")
    em_csv = read_scale_metric_csv(csv, "best_val_loss")
    np.testing.assert_allclose(em_db.compute, em_csv.compute)
    np.testing.assert_allclose(em_db.value, em_csv.value)


def test_column_resolution_order(tmp_path):
    assert candidates("N")[:2] == ("params_non_embedding", "N") and candidates("N")[-1] == "params_total"
    assert candidates("N", "total")[0] == "params_total" and candidates("N", "total")[-1] == "params_non_embedding"
    assert candidates("loss")[:2] == ("final_val_loss", "loss")
    p = tmp_path / "c.csv"
    # the Chinchilla extraction's columns: D is derived from C = 6ND
    p.write_text("x,Model Size,Training FLOP,loss\n0,1e8,6e18,3.0\n1,2e8,2.4e19,2.8\n")
    cols = read_runs_csv(p)
    assert cols.columns == {"N": "Model Size", "C": "Training FLOP", "loss": "loss", "D": "C/6N"}
    np.testing.assert_allclose(cols.values["D"], [1e10, 2e10])
    # a named column wins over every default
    p.write_text("N,params,D,loss,best\n1,5,10,3,2\n2,6,20,2.5,2.1\n")
    cols = read_runs_csv(p, {"N": "params", "loss": "best"})
    assert cols.columns["N"] == "params" and cols.values["loss"].tolist() == [2.0, 2.1]
    assert cols.columns["C"] == "6ND" and cols.values["C"].tolist() == [300.0, 720.0]


def test_bad_tables_name_the_file_and_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("N,D,loss\n1e8,1e9,3.0\n2e8,oops,2.9\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: column 'D'"):
        read_runs_csv(p)
    with pytest.raises(DataError, match="missing column"):
        read_runs_csv(p, {"N": "params"})
    with pytest.raises(DataError, match="does not exist"):
        read_runs(tmp_path / "none.csv")
