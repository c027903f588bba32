"""Build the static documentation site from the notebooks: `python tools/build_docs.py` -> `_docs/` (git-ignored).

Each notebook in `nbs/` and `nbs/runs/` is executed in its own kernel (cells flagged `#| slow`, `#| gpu` or `#| notest`
are shown but not run; the run notebooks use their smoke defaults), then converted with nbconvert to one offline HTML
page (`sonata_nb.runs.notebook_html`: no CDN, no widget state, plotly.js embedded once per page) with a navigation
bar; `index.html` is `nbs/index.ipynb`. Open `_docs/index.html` in any browser, without a server or a network.

    python tools/build_docs.py                       # every notebook (several minutes on 2 CPU cores)
    python tools/build_docs.py --only index 30_viz   # some pages (the navigation still lists every page)
    python tools/build_docs.py --no-exec             # convert without executing (pages without outputs)
"""
import argparse, html, json, os, re, shutil, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sonata_nb, also without `pip install -e .`
NBS = ROOT/"nbs"
SKIP_FLAGS = ("slow", "gpu", "notest")  # settings.ini tst_flags: cells nbdev_test skips
PLOTLY = "application/vnd.plotly.v1+json"
CSS = """body.jp-Notebook{padding:0;margin:0}main{margin-left:250px;padding:16px 32px;max-width:1200px}
nav.sonata-nav{position:fixed;top:0;left:0;bottom:0;width:230px;overflow-y:auto;background:#f7f7f7;border-right:1px solid #ddd;
padding:12px;font:14px system-ui,sans-serif}nav.sonata-nav a{display:block;padding:2px 4px;color:#0550ae;text-decoration:none}
nav.sonata-nav a.current{font-weight:bold;background:#e4ecf7}nav.sonata-nav h4{margin:12px 0 4px}
.sonata-skipped{font:12px system-ui,sans-serif;color:#8a6d00;margin:2px 0 0 4px}"""


def pages() -> list[Path]:
    "Notebooks of the site, in navigation order: index, the library notebooks, the run notebooks"
    nbs = [p for p in sorted(NBS.glob("*.ipynb")) + sorted((NBS/"runs").glob("*.ipynb")) if not p.name.startswith(("_", "."))]
    return sorted(nbs, key=lambda p: (p.name != "index.ipynb", p.parent != NBS, p.name))


def out_path(nb: Path, out: Path) -> Path: return out/nb.relative_to(NBS).with_suffix(".html")


def directives(src: str) -> dict:
    "nbdev's `#| name value` lines of a cell"
    found = {}
    for line in src.splitlines():
        m = re.match(r"^#\|\s*([\w-]+):?\s*(.*)$", line.strip())
        if m: found[m.group(1)] = m.group(2).strip()
    return found


def title(nb) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", c.source, re.M)
            if m: return m.group(1).strip()
    return ""


def skip_reason(d: dict) -> str | None:
    "Why a cell with directives `d` is not run: a `tst_flags` flag, or `#| eval: false` (as nbdev_test)"
    flag = next((f for f in SKIP_FLAGS if f in d), None)
    if flag: return f"#| {flag}"
    if d.get("eval", "").lower() == "false": return "#| eval: false"
    return None


def execute(nb_path: Path, timeout: int):
    "The executed notebook: flagged cells tagged skip-execution (nbclient leaves them), run in the notebook's folder"
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(str(nb_path), as_version=4)
    for c in nb.cells:
        if c.cell_type == "code" and skip_reason(directives(c.source)):
            c.metadata.setdefault("tags", []).append("skip-execution")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}},
                            skip_cells_with_tag="skip-execution")
    try: client.execute()
    except Exception as e:
        e.nb = nb  # the outputs up to the failing cell
        raise
    return nb


def offline_plotly(nb):
    "Give every plotly output without an HTML representation one (plotly.js inlined in the page's first figure only)"
    import plotly.io as pio
    from sonata_nb.viz import figure_html
    seen = False
    for c in nb.cells:
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if PLOTLY in data and "text/html" not in data:
                data["text/html"] = figure_html(pio.from_json(json.dumps(data[PLOTLY])), include_plotlyjs=not seen)
            if "plotly.js v" in data.get("text/html", ""): seen = True
    return nb


def for_reading(nb):
    "Hidden cells dropped, directive lines removed from the shown code, skipped cells marked"
    import nbformat
    cells = []
    for c in nb.cells:
        if c.cell_type != "code": cells.append(c); continue
        d = directives(c.source)
        code = "\n".join(l for l in c.source.splitlines() if not l.strip().startswith("#|")).strip()
        if "hide" in d or not code: continue
        c.source = code
        if "skip-execution" in c.metadata.get("tags", []):
            c.outputs = [nbformat.v4.new_output("display_data", data={"text/html": f"<div class='sonata-skipped'>not run in the docs build ({skip_reason(d)})</div>"})]
        cells.append(c)
    nb.cells = cells
    return nb


def nav_html(titles: dict, current: Path, out: Path) -> str:
    page = out_path(current, out)
    def link(nb):
        href = os.path.relpath(out_path(nb, out), page.parent)
        cls = " class='current'" if nb == current else ""
        return f"<a href='{html.escape(href)}'{cls}>{html.escape(titles[nb] or nb.stem)}</a>"
    lib = [p for p in titles if p.parent == NBS and p.name != "index.ipynb"]
    runs = [p for p in titles if p.parent != NBS]
    index = [p for p in titles if p.name == "index.ipynb"]
    return ("<nav class='sonata-nav'>" + "".join(map(link, index)) + "<h4>Library</h4>" + "".join(map(link, lib))
            + "<h4>Run notebooks</h4>" + "".join(map(link, runs)) + "</nav>")


def build_page(nb_path: Path, out: Path, titles: dict, run: bool, timeout: int) -> tuple[str, float, str]:
    "Execute and convert one notebook; (page, seconds, error or '')"
    import nbformat
    from sonata_nb.runs import notebook_html
    t0, err = time.time(), ""
    try: nb = execute(nb_path, timeout) if run else nbformat.read(str(nb_path), as_version=4)
    except Exception as e:  # the page still shows what ran, and the error
        err = f"{type(e).__name__}: {str(e)[-1500:]}"
        nb = getattr(e, "nb", None) or nbformat.read(str(nb_path), as_version=4)
    nb.metadata["title"] = titles[nb_path] or nb_path.stem
    page = out_path(nb_path, out)
    page.parent.mkdir(parents=True, exist_ok=True)
    text = notebook_html(for_reading(offline_plotly(nb)), nav=nav_html(titles, nb_path, out), css=CSS)
    if err: text = text.replace("<main>", f"<main><pre class='sonata-skipped'>This page failed to build: {html.escape(err)}</pre>", 1)
    page.write_text(text, encoding="utf-8")
    return str(page.relative_to(out)), time.time() - t0, err


def build(out: Path = ROOT/"_docs", only: list[str] | None = None, run: bool = True, jobs: int = 1, timeout: int = 900) -> list:
    "Build the site into `out`; returns (page, seconds, error) per page"
    import nbformat
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is never needed: the notebooks run on generated data
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # the kernels import this checkout
    allp = pages()
    titles = {p: title(nbformat.read(str(p), as_version=4)) for p in allp}
    todo = [p for p in allp if not only or p.stem in only or str(p.relative_to(NBS).with_suffix("")) in only]
    unknown = set(only or []) - {p.stem for p in todo} - {str(p.relative_to(NBS).with_suffix("")) for p in todo}
    if unknown: raise SystemExit(f"build_docs: no notebook {sorted(unknown)} in nbs/ or nbs/runs/ (names without .ipynb)")
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(build_page, todo, [out] * len(todo), [titles] * len(todo), [run] * len(todo), [timeout] * len(todo)))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default=str(ROOT/"_docs"), help="site folder (default: _docs/)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="build only these notebooks (index, 30_viz, runs/scannet, ...)")
    p.add_argument("--no-exec", action="store_true", help="convert without executing")
    p.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per cell before giving up (default 900)")
    a = p.parse_args(argv)
    t0 = time.time()
    results = build(Path(a.out), a.only, not a.no_exec, a.jobs, a.timeout)
    for page, secs, err in results: print(f"{secs:7.1f} s  {page}" + (f"  FAILED: {err.splitlines()[0] if err else ''}" if err else ""))
    print(f"{len(results)} page(s) in {time.time() - t0:.0f} s: {Path(a.out)/'index.html'}")
    failed = [r for r in results if r[2]]
    if failed: raise SystemExit(f"{len(failed)} page(s) failed to execute: {', '.join(r[0] for r in failed)} (see the pages)")


if __name__ == "__main__": main()
