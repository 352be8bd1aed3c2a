"""A published fit end to end: Epoch's 245 Chinchilla points (Besiroglu et al. 2024) through
`lmscale fit --exclude-top-loss 5` and `lmscale allocate`, and how an allocation is judged
identified: on the intervals it reports (N_opt, D_opt), not on an intermediate such as G."""
from __future__ import annotations

import json

import pytest

from lmscale.cli.main import main
from lmscale.scaling.identify import allocation_at_budget, allocation_warning

# Besiroglu, Erdil, Barnett and You (2024), "Chinchilla scaling: a replication attempt", eq. 4
BESIROGLU = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
WIDE_G = {"G": "has a 95% interval [0.01208, 0.3132] that spans a factor 25.9 (more than 10x)"}
EPOCH_COLS = ["--n-col", "Model Size", "--c-col", "Training FLOP", "--loss-col", "loss"]


@pytest.fixture
def epoch_csv(shared_data):
    """Epoch's 245 Chinchilla points, from the data mirror (skipped without them)."""
    csv = shared_data / "chinchilla_fig4_epoch.csv"
    if not csv.is_file():
        pytest.skip("chinchilla_fig4_epoch.csv is not in the data mirror")
    return csv


@pytest.mark.slow
def test_epoch_points_reproduce_besiroglu_and_allocate_without_a_false_alarm(epoch_csv, tmp_path, capsys):
    fit_json = tmp_path / "fit.json"
    assert main(["fit", str(epoch_csv), *EPOCH_COLS, "--exclude-top-loss", "5", "--bootstrap", "60", "--seed", "0",
                 "--out", str(fit_json)]) == 0
    fit = json.loads(fit_json.read_text())
    for k, v in BESIROGLU.items():
        assert fit["params"][k] == pytest.approx(v, rel=0.03), k
    capsys.readouterr()

    assert main(["allocate", "--flops", "5.76e23", "--fit", str(fit_json), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lo, hi = out["ci"]["N_opt"]
    assert hi / lo < 10 and out["identified"] is True and "warning" not in out
    assert main(["allocate", "--flops", "5.76e23", "--fit", str(fit_json)]) == 0
    assert "UNIDENTIFIED" not in capsys.readouterr().out


@pytest.mark.slow
def test_report_leaves_out_the_same_outliers_and_fits_the_same_law(epoch_csv, tmp_path, capsys):
    cols = [*EPOCH_COLS, "--exclude-top-loss", "5"]
    assert main(["report", str(epoch_csv), *cols, "--bootstrap", "0", "--holdout", "none", "-o",
                 str(tmp_path / "r.html"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_runs"] == 240 and sum("--exclude-top-loss" in d for d in res["dropped"]) == 5
    for k, v in BESIROGLU.items():
        assert res["fit"]["params"][k] == pytest.approx(v, rel=0.03), k
    assert main(["report", str(epoch_csv), *cols[:-1], "245", "-o", str(tmp_path / "x.html")]) == 2
    assert "--exclude-top-loss 245" in capsys.readouterr().err


def test_a_wide_intermediate_does_not_unidentify_a_narrow_allocation():
    ident = {"allocation_identified": False, "unidentified": dict(WIDE_G)}
    narrow = {"N_opt": [5.6e10, 1.2e11], "D_opt": [7.9e11, 1.7e12]}
    assert allocation_at_budget(ident, narrow) == {"allocation_identified": True, "unidentified": {}}
    # without the allocation's own intervals the parameter-level judgement stands
    assert allocation_at_budget(ident, {})["allocation_identified"] is False


def test_a_wide_allocation_or_a_structural_problem_still_warns():
    wide = allocation_at_budget({"unidentified": dict(WIDE_G)}, {"N_opt": [1e9, 1e11], "D_opt": [1e11, 2e11]})
    assert wide["allocation_identified"] is False and set(wide["unidentified"]) == {"N_opt"}
    assert "N_opt" in allocation_warning(wide) and "spans a factor 100" in wide["unidentified"]["N_opt"]
    pinned = {"unidentified": {"alpha": "is at an extreme (alpha = 12; a plausible exponent lies in (0, 10))",
                               "a": "follows from alpha, which the runs do not identify"}}
    judged = allocation_at_budget(pinned, {"N_opt": [1e10, 2e10], "D_opt": [1e11, 2e11]})
    assert judged["allocation_identified"] is False and set(judged["unidentified"]) == {"alpha", "a"}




def one_error_line(rc: int, err: str, *names: str) -> str:
    """Exit code 2 and one line on stderr, naming each of `names`."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "error:" in lines[0] and all(n in lines[0] for n in names), (names, lines[0])
    return lines[0]


@pytest.mark.slow
def test_report_and_plot_draw_the_law_of_a_fit_file_without_refitting(epoch_csv, tmp_path, capsys):
    fit_json = tmp_path / "fit.json"
    assert main(["fit", str(epoch_csv), *EPOCH_COLS, "--exclude-top-loss", "5", "--bootstrap", "30",
                 "--out", str(fit_json)]) == 0
    fit = json.loads(fit_json.read_text())
    assert "UNIDENTIFIED" not in capsys.readouterr().out
    # G, an intermediate, has a wide interval; it is shown as such, not called unidentified
    assert fit["identification"]["unidentified"] == {} and "G" in fit["identification"]["wide_intermediates"]

    html = tmp_path / "r.html"
    assert main(["report", str(epoch_csv), *EPOCH_COLS, "--exclude-top-loss", "5", "--fit", str(fit_json),
                 "-o", str(html), "--json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert err == ""  # the report keeps the fit's 240 runs: no warning
    assert res["fit"]["params"] == fit["params"]  # exactly: drawn, not refitted
    assert res["fit"]["from_file"] == {"path": str(fit_json), "n_points": 240, "n_runs_here": 240,
                                       "bootstrap_refits": 30}
    assert res["fit"]["identification"]["unidentified"] == {} and "holdout_check" not in res["fit"]
    text = html.read_text()
    assert "Law read from <code>" + str(fit_json) in text and "fitted there on 240 points" in text
    assert "Unidentified law" not in text

    assert main(["plot", str(epoch_csv), *EPOCH_COLS, "--exclude-top-loss", "5", "--fit", str(fit_json),
                 "-o", str(tmp_path / "png")]) == 0
    out = capsys.readouterr().out
    assert f"law read from {fit_json} (fitted there on 240 points), not refitted" in out
    assert (tmp_path / "png" / "loss_vs_params.png").is_file()

    # the outliers kept this time: drawn all the same, with one line saying the counts differ
    assert main(["report", str(epoch_csv), *EPOCH_COLS, "--fit", str(fit_json), "-o", str(tmp_path / "all.html")]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warning:" in err and "240 points" in err and "245 runs" in err


@pytest.mark.parametrize("damage, names", [
    (lambda f: {**f, "law": "kaplan"}, ["--fit", "kaplan"]),
    (lambda f: {**f, "params": {**f["params"], "alpha": "0.34"}}, ["--fit", "params"]),
    (lambda f: {k: v for k, v in f.items() if k != "n_points"}, ["--fit", "n_points"]),
    (lambda f: json.dumps(f)[:40], ["--fit", "not valid JSON"]),
])
def test_a_fit_file_the_report_cannot_draw_is_one_line(tmp_path, capsys, damage, names):
    csv = tmp_path / "runs.csv"
    csv.write_text("N,D,loss\n" + "".join(f"{n},{d},{1.8 + 480 / n ** 0.35 + 2000 / d ** 0.37}\n"
                                          for n in (1e7, 1e8, 1e9) for d in (1e9, 1e10, 1e11)))
    fit = {"law": "chinchilla", "params": dict(BESIROGLU), "n_points": 9, "converged": True}
    damaged = damage(fit)
    bad = tmp_path / "fit.json"
    bad.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    for command, out in (("report", "r.html"), ("plot", "png")):
        rc = main([command, str(csv), "--fit", str(bad), "-o", str(tmp_path / out)])
        one_error_line(rc, capsys.readouterr().err, *names, str(bad))
        assert not (tmp_path / out).exists()
