"""The documentation site of tools/build_docs.py: pages built from executed notebooks with their figures, offline
(plotly.js once per page, nothing fetched from a CDN), a navigation that reaches every notebook."""
import importlib.util, json, os, re, subprocess, sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_docs", ROOT/"tools"/"build_docs.py")
build_docs = importlib.util.module_from_spec(spec); spec.loader.exec_module(build_docs)
sys.path.insert(0, str(Path(__file__).parent))
from test_papermill import cdn_uses


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "Three pages built as the command builds them (two at a time): the index, a library notebook with figures, a run notebook"
    out = tmp_path_factory.mktemp("docs")/"site"
    r = subprocess.run([sys.executable, "tools/build_docs.py", "--only", "index", "30_viz", "runs/scannet", "--out", str(out),
                        "--jobs", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "3 page(s) in" in r.stdout
    return out


def test_pages_have_figures_offline(site):
    for page in ("30_viz.html", "runs/scannet.html"):
        text = (site/page).read_text()
        assert text.count("* plotly.js v") == 1, page  # embedded once per page
        assert text.count("Plotly.newPlot(") >= 2, page
        assert cdn_uses(text) == [], page
        assert "widget-state" not in text and re.search(r">In\s\[\d+\]:<", text), page  # executed: cells carry execution counts
    viz = (site/"30_viz.html").read_text()
    assert "not run in the docs build (#| slow)" in viz  # a skipped cell is shown and marked
    assert "default_exp" not in viz and "#| export" not in viz  # directive lines and directive-only cells are not shown
    run = (site/"runs"/"scannet.html").read_text()
    assert "mIoU/mAcc/allAcc" in run and "ground truth" in run


def test_navigation_reaches_every_notebook(site):
    pages = build_docs.pages()
    assert pages[0].name == "index.ipynb" and {p.parent.name for p in pages} == {"nbs", "runs"}
    for page in ("index.html", "30_viz.html", "runs/scannet.html"):
        text = (site/page).read_text()
        hrefs = re.findall(r"<nav class=[\"']sonata-nav[\"']>.*?</nav>", text, re.S)[0]
        links = re.findall(r"href=[\"']([^\"']+)[\"']", hrefs)
        assert len(links) == len(pages), page
        targets = {os.path.normpath((site/page).parent/l) for l in links}
        assert targets == {os.path.normpath(build_docs.out_path(p, site)) for p in pages}, page


def test_plain_plotly_outputs_get_offline_html():
    "A figure a notebook displays without OfflineFigure (plotly mimetype only) gets offline HTML, plotly.js in the first only"
    import plotly.graph_objects as go
    fig = json.loads(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])).to_json())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[
        nbformat.v4.new_output("display_data", data={build_docs.PLOTLY: fig})]) for _ in range(2)])
    html = [c.outputs[0].data["text/html"] for c in build_docs.offline_plotly(nb).cells]
    assert ["plotly.js v" in h for h in html] == [True, False] and all("Plotly.newPlot(" in h for h in html)
