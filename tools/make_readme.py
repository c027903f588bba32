"""Write README.md from nbs/index.ipynb without Quarto: markdown cells verbatim, code cells fenced, `#| hide` cells dropped."""
import sys
from pathlib import Path

from execnb.nbio import read_nb
from nbdev.config import get_config


def render(nb_path):
    "Markdown text of the notebook at `nb_path`"
    out = []
    for cell in read_nb(nb_path).cells:
        src = cell.source
        if cell.cell_type == "code":
            lines = src.splitlines()
            if any(l.strip() in ("#| hide", "#|hide") for l in lines):
                continue
            code = "\n".join(l for l in lines if not l.startswith("#|")).strip()
            if code:
                out.append(f"```python\n{code}\n```")
        else:
            out.append(src.strip())
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    cfg = get_config()
    text = render(cfg.nbs_path / cfg.readme_nb)
    readme = Path(cfg.config_path) / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run `python tools/make_readme.py`")
    else:
        readme.write_text(text)
