"""The scaling report: built from a CSV of runs or a registry, opened in a real headless Chromium."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lmscale.cli import main
from lmscale.errors import DataError
from lmscale.scaling.plots import frontier, isoflop_minima
from lmscale.scaling.registry import Registry, RunRecord
from lmscale.scaling.report import build_report, fit_from_file, read_fit_file
from lmscale.scaling.runs import RunsTable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Hoffmann et al. 2022, eq. 10: the published Chinchilla fit, used here to generate runs.
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _law_csv(path: Path, isoflop: bool = True, noise: float = 0.003, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["name,N,D,loss"]
    for c in (1e18, 3e18, 1e19, 3e19):
        for n in np.geomspace(2e7, 2e9, 7) if isoflop else []:
            d = c / (6 * n)
            h = HOFFMANN
            loss = (h["E"] + h["A"] / n ** h["alpha"] + h["B"] / d ** h["beta"]) * np.exp(rng.normal(0, noise))
            rows.append(f"C{c:.0e}-N{n:.3g},{n},{d},{loss}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)]


@pytest.fixture(scope="module")
def law_report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("law-report")
    src = _law_csv(tmp_path / "runs.csv")
    res = build_report(src, tmp_path / "r.html", png_dir=tmp_path / "png", n_bootstrap=30, n_col="N",
                       d_col="D", loss_col="loss", grid="small")
    return tmp_path, src, res


def test_report_from_a_law_csv_recovers_the_law_and_embeds_every_figure(law_report):
    tmp_path, src, res = law_report
    fit = res["fit"]
    for k, v in HOFFMANN.items():
        assert fit["params"][k] == pytest.approx(v, rel=0.15), k
    assert fit["holdout_check"]["max_abs_rel_error"] < 0.02
    html = (tmp_path / "r.html").read_text()
    imgs = _images(html)
    assert len(imgs) == len(res["figures"]) >= 5
    assert all(i.startswith(PNG_MAGIC) for i in imgs)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted([".lmscale", *(f"{n}.png" for n in
                                                                                      res["figures"])])
    assert "http://" not in html and "https://" not in html  # opens offline
    # IsoFLOP minima sit where the generating law puts them (closed form, Hoffmann et al. eq. 4)
    t = RunsTable.from_csv(src, n_col="N", d_col="D", loss_col="loss")
    mins = isoflop_minima(t)
    assert len(mins) == 4
    h = HOFFMANN
    G = (h["alpha"] * h["A"] / (h["beta"] * h["B"])) ** (1 / (h["alpha"] + h["beta"]))
    for m in mins:
        n_opt = G * (m["C"] / 6) ** (h["beta"] / (h["alpha"] + h["beta"]))
        assert abs(np.log10(m["N_opt"] / n_opt)) < 0.2


@pytest.fixture
def chinchilla_csv(shared_data):
    p = shared_data / "chinchilla_fig4_epoch.csv"
    if not p.exists():
        pytest.skip("chinchilla_fig4_epoch.csv not present")
    return p


def test_report_from_the_published_chinchilla_runs(chinchilla_csv, tmp_path):
    res = build_report(chinchilla_csv, tmp_path / "c.html", n_bootstrap=10, holdout=None)
    assert res["n_runs"] == 245
    p = res["fit"]["params"]
    # Hoffmann et al. 2022 / Besiroglu et al. 2024: alpha and beta in [0.25, 0.6], E near 1.7-2.0
    assert 1.5 < p["E"] < 2.1 and 0.25 < p["alpha"] < 0.6 and 0.25 < p["beta"] < 0.6
    # compute-optimal exponent a = beta/(alpha+beta) ~ 0.5 (Chinchilla: 0.46-0.54)
    assert 0.4 < res["fit"]["derived"]["a"] < 0.65
    assert len(_images((tmp_path / "c.html").read_text())) == 5


def test_frontier_is_the_running_minimum():
    C = np.array([1, 2, 3, 4, 5.0])
    L = np.array([5, 4, 4.5, 3, 3.5])
    assert frontier(C, L).tolist() == [0, 1, 3]


def test_report_from_a_registry_with_training_curves(tmp_path):
    reg = Registry(tmp_path / "reg.sqlite")
    h = HOFFMANN
    for i, n in enumerate((1e5, 3e5, 1e6)):
        for j, d in enumerate((1e6, 3e6, 1e7)):
            loss = h["E"] + h["A"] / n ** h["alpha"] + h["B"] / d ** h["beta"]
            curve = [[s, d * s / 4, loss * (1 + 0.5 / s)] for s in (1, 2, 3, 4)]
            reg.add_run(RunRecord(run_id=f"r{i}{j}", name=f"r{i}{j}", sweep="s", params_non_embedding=int(n),
                                  params_total=int(n) + 10000, tokens=d, status="finished",
                                  final_val_loss=loss, loss_curve=curve))
    reg.add_run(RunRecord(run_id="f", name="f", sweep="s", status="failed", error="boom"))
    reg.close()
    assert main(["report", str(tmp_path / "reg.sqlite"), "-o", str(tmp_path / "r.html"), "--bootstrap", "10",
                 "--grid", "small", "--png-dir", str(tmp_path / "png")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "fig-training_curves" in html and len(_images(html)) == 6
    assert (tmp_path / "png" / "training_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_command_without_enough_runs_for_a_fit(tmp_path, capsys):
    p = tmp_path / "few.csv"
    p.write_text("N,D,loss\n1e6,2e7,3.5\n4e6,8e7,3.1\n1.6e7,3.2e8,2.8\n")
    assert main(["plot", str(p), "-o", str(tmp_path / "png")]) == 0
    assert "3 runs" in capsys.readouterr().out
    assert (tmp_path / "png" / "loss_vs_compute.png").read_bytes().startswith(PNG_MAGIC)


def test_report_bad_inputs(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="need parameter"):
        build_report(p, tmp_path / "x.html")
    assert main(["report", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "y.html")]) == 2


def test_report_draws_a_fit_file_with_its_intervals_and_bands(tmp_path, capsys):
    src = _law_csv(tmp_path / "runs.csv")
    fit_json = tmp_path / "fit <b>.json"  # a path is data: escaped in the HTML
    assert main(["fit", str(src), "--law", "chinchilla", "--n-col", "N", "--d-col", "D", "--loss-col", "loss",
                 "--grid", "coarse", "--bootstrap", "12", "--out", str(fit_json)]) == 0
    fit = json.loads(fit_json.read_text())
    capsys.readouterr()
    res = build_report(src, tmp_path / "r.html", n_col="N", d_col="D", loss_col="loss", fit_file=fit_json)
    got = res["fit"]
    assert got["params"] == fit["params"] and got["identification"] == fit["identification"]
    assert got["ci95"] == fit["ci95"]  # the fit's intervals, not new ones
    assert got["from_file"]["bootstrap_refits"] == 12 - fit["bootstrap"]["n_failed"]
    html = (tmp_path / "r.html").read_text()
    assert "Law read from <code>" + str(tmp_path / "fit &lt;b&gt;.json") in html and "<b>.json" not in html
    assert f"Bands come from the fit file's {got['from_file']['bootstrap_refits']} bootstrap refits" in html
    # what the runs give is measured on the report's runs: the residuals of the saved law
    t = RunsTable.from_csv(src, n_col="N", d_col="D", loss_col="loss")
    law = fit_from_file(t, read_fit_file(fit_json))["_law"]
    assert np.allclose(law.residuals_, np.log(t.loss) - np.log(law.predict(t.N, t.D)))


_PROBE = """
<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e.type)); }, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {n: imgs.length, errors: window.__errors,
             sizes: imgs.map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; })};
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_report_opens_in_headless_chromium_with_every_image_decoded(law_report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    report_dir, _, _ = law_report
    html = (report_dir / "r.html").read_text()
    n_expected = len(_images(html))
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + _PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    out = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"<pre id=\"probe\">(.*?)</pre>", out.stdout, re.S)
    assert m, out.stdout[-2000:]
    info = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert info["errors"] == []
    assert info["n"] == n_expected >= 5
    assert all(c and w > 100 and h > 100 for c, w, h in info["sizes"])
    shot = tmp_path / "shot.png"
    out = subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,2000",
                          (report_dir / "r.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC)
