"""The shape of the package: the engine never reaches for streamlit, and says what it exports."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = sorted(p for p in (ROOT / "lorarank").rglob("*.py"))


class TestEngineBoundary:
    def test_engine_imports_without_streamlit_or_pandas(self):
        """Importing every engine module pulls in neither streamlit nor the UI helpers."""
        modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in ENGINE
                   if p.name != "__main__.py"]
        code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
                + "bad = [m for m in sys.modules if m.split('.')[0] in ('streamlit', 'ui')]\n"
                  "print(','.join(bad))")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == ""

    @pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
    def test_no_streamlit_in_source(self, path):
        """No engine file mentions an import of streamlit or of the ui package."""
        text = path.read_text()
        for bad in ("import streamlit", "from streamlit", "from ui", "import ui"):
            assert bad not in text, f"{path.name} contains {bad!r}"

    def test_public_names_exist(self):
        """Everything lorarank.__all__ names is importable."""
        import lorarank

        missing = [name for name in lorarank.__all__ if not hasattr(lorarank, name)]
        assert missing == []


class TestTestSuite:
    def test_no_fixture_is_an_instance_method(self):
        """Fixtures are module-level functions: pytest 9.1 deprecates class-scoped fixtures written
        as methods (PytestRemovedIn10Warning) and pytest 10 removes them."""
        import ast

        found = []
        for path in sorted((ROOT / "tests").rglob("*.py")):
            for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
                for fn in cls.body:
                    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                            "fixture" in ast.unparse(d) for d in fn.decorator_list):
                        found.append(f"{path.relative_to(ROOT)}:{fn.lineno} {cls.name}.{fn.name}")
        assert found == []
