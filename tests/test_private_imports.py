"""No module imports another module's private names (issue 21): a module that needs something
from another gets a public seam.

Checked by reading the source of the product code (the engine, the UI helpers, the pages, the
app and the benchmarks; tests may reach into the module they test). Private means a name with a
leading underscore (not a dunder): a private module is for its own package and the packages
inside it, a private name for its own module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lorarank", "ui", "pages", "benchmarks")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(path: Path) -> list[str]:
    """``file:line: what`` for every private name or module ``path`` takes from another module."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    where = path.relative_to(ROOT)
    found, bound = [], {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in PACKAGES:
                continue
            parts = source.split(".")
            for i, part in enumerate(parts):
                owner = ".".join(parts[:i])
                if _private(part) and not (module == owner or module.startswith(owner + ".")):
                    found.append(f"{where}:{node.lineno}: imports {source}, private to {owner}")
                    break
            for alias in node.names:
                own_module = source == package and (
                    ROOT / source.replace(".", "/") / f"{alias.name}.py").is_file()
                if _private(alias.name) and source != module and not own_module:
                    found.append(f"{where}:{node.lineno}: imports {alias.name} from {source}")
                bound[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in bound and _private(node.attr)):
            found.append(f"{where}:{node.lineno}: uses {node.value.id}.{node.attr}")
    return found


def test_no_private_cross_imports():
    """The product code takes no private name or module from another module."""
    files = [p for d in PACKAGES for p in sorted((ROOT / d).rglob("*.py"))] + [ROOT / "app.py"]
    found = [line for path in files for line in private_imports(path)]
    assert found == [], "\n".join(found)


def test_the_check_sees_each_kind(tmp_path):
    """The check finds a private name, a private module outside its package and a private
    attribute of an imported module (so a pass above means something)."""
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        (tmp_path / "lorarank" / "adapters").mkdir(parents=True)
        (tmp_path / "lorarank" / "adapters" / "_tensors.py").write_text("X = 1\n")
        (tmp_path / "lorarank" / "adapters" / "lora.py").write_text(
            "from . import _tensors\nfrom ._tensors import X\n")
        bad = tmp_path / "lorarank" / "audit.py"
        bad.write_text("from .fit import _batches\nfrom .adapters._tensors import X\n"
                       "from lorarank import fit\nfit._Ticker\n")
        assert private_imports(tmp_path / "lorarank" / "adapters" / "lora.py") == []
        assert [line.split(": ", 1)[1] for line in private_imports(bad)] == [
            "imports _batches from lorarank.fit",
            "imports lorarank.adapters._tensors, private to lorarank.adapters",
            "uses fit._Ticker"]
    finally:
        ROOT = saved
