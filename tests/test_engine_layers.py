"""The engine's modules form a chain without cycles: runtime → experiment → tester → hooks → trainer → launch → recipes.
Each imports only modules before it, at the top of the file (no import deferred into a function), and imports alone."""
import ast, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ["runtime", "experiment", "tester", "hooks", "trainer", "launch", "recipes"]


def package_imports(path:Path) -> tuple[set, list]:
    "(modules of sonata_nb imported at the top level, (line, module) of those imported anywhere else)"
    tree, top, nested = ast.parse(path.read_text()), set(), []
    def name(node):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level: return mod.split(".")[0] or None
            return mod.split(".")[1] if mod.startswith("sonata_nb.") else None
        return next((a.name.split(".")[1] for a in node.names if a.name.startswith("sonata_nb.")), None)
    main_guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    guarded = {id(x) for g in main_guard for x in ast.walk(g)}  # a program's entry, not a module dependency
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and name(node): top.add(name(node))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and name(node) and node not in tree.body and id(node) not in guarded:
            nested.append((node.lineno, name(node)))
    return top, nested


@pytest.mark.parametrize("module", CHAIN)
def test_imports_only_earlier_modules_at_the_top(module):
    top, nested = package_imports(ROOT/"sonata_nb"/f"{module}.py")
    assert not nested, f"sonata_nb/{module}.py imports inside functions (a deferred import): {nested}"
    later = sorted(m for m in top if m in CHAIN and CHAIN.index(m) >= CHAIN.index(module))
    assert not later, f"sonata_nb/{module}.py imports {later}, which come after it in {CHAIN}"


def test_each_imports_alone():
    "Each module imported first, in a fresh set of sonata_nb modules (one process: torch and spconv load once)"
    script = ("import importlib, sys\n"
              f"for m in {CHAIN!r}:\n"
              "    for k in [k for k in sys.modules if k == 'sonata_nb' or k.startswith('sonata_nb.')]: del sys.modules[k]\n"
              "    importlib.import_module('sonata_nb.' + m)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
