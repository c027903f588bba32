"The module order stated in nbs/index.ipynb holds: each module imports only modules before it, and imports alone."
import ast, json, os, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sonata_nb"


def stated_order() -> list[str]:
    "The modules in the order the index notebook states (the line starting 'Module order:')"
    cells = json.loads((ROOT / "nbs" / "index.ipynb").read_text())["cells"]
    text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    line = next((l for l in text.splitlines() if l.startswith("Module order:")), None)
    assert line, "nbs/index.ipynb must state the module order on a line starting 'Module order:'"
    return re.findall(r"`(\w+)`", line)


def package_modules() -> set[str]:
    return {p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_")}


def imported_modules(module:str) -> list[tuple[str, int, bool]]:
    "Every sonata_nb module `module` imports (module, line, whether at the top level), outside a `__main__` block"
    tree = ast.parse((PKG / f"{module}.py").read_text())
    main_guards = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    entry = {id(x) for g in main_guards for x in ast.walk(g)}  # `python -m` entry code is a program, not a dependency
    found = []
    for node in ast.walk(tree):
        if id(node) in entry: continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: names = [node.module] if node.module else [a.name for a in node.names]
            elif (node.module or "").startswith("sonata_nb."): names = [node.module.split(".")[1]]
            elif node.module == "sonata_nb": names = [a.name for a in node.names]
            else: continue
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("sonata_nb.")]
        else: continue
        found += [(n.split(".")[0], node.lineno, node in tree.body) for n in names if n.split(".")[0] in package_modules()]
    return found


def test_the_order_names_every_module_once():
    order = stated_order()
    assert len(order) == len(set(order)), f"named twice: {[m for m in order if order.count(m) > 1]}"
    assert set(order) == package_modules(), (f"missing from the stated order: {sorted(package_modules() - set(order))}; "
                                             f"not modules: {sorted(set(order) - package_modules())}")


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_imports_follow_the_order(module):
    "No import of a later module, not even one deferred into a function (that is how a cycle hides)"
    order = stated_order()
    imports = imported_modules(module)
    later = [f"{m} (line {line})" for m, line, _ in imports if m != module and order.index(m) > order.index(module)]
    assert not later, f"sonata_nb/{module}.py imports modules stated after it: {later}"
    deferred = [f"{m} (line {line})" for m, line, top in imports if not top]
    assert not deferred, f"sonata_nb/{module}.py imports package modules inside functions (import them at the top): {deferred}"


def test_each_module_imports_alone(forkserver):
    "Each module imported first, with no sonata_nb module loaded before it (one process: torch and spconv load once)"
    code = ("import importlib, sys\n"
            "for m in sys.argv[1:]:\n"
            "    for k in [k for k in sys.modules if k == 'sonata_nb' or k.startswith('sonata_nb.')]: del sys.modules[k]\n"
            "    importlib.import_module('sonata_nb.' + m)\n")
    r = forkserver.run(["-c", code, *stated_order()], cwd=ROOT, env=os.environ)  # torch and spconv preloaded
    assert r.returncode == 0, f"importing a module alone failed:\n{r.stderr[-2000:]}"
