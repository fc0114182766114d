"""Fixtures of the hostile-input corpus: the browser fixtures of ``tests/e2e`` reused.

``tests/e2e/conftest.py`` (a real ``streamlit run app.py`` and headless Chromium) is loaded
under another module name so its fixtures serve this folder too; see its docstring.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_E2E = Path(__file__).resolve().parents[1] / "e2e"
if str(_E2E) not in sys.path:
    sys.path.insert(0, str(_E2E))
_spec = importlib.util.spec_from_file_location("_lorarank_e2e_fixtures", _E2E / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

app_server = _fixtures.app_server
app_url = _fixtures.app_url
fresh_server = _fixtures.fresh_server
browser_type_launch_args = _fixtures.browser_type_launch_args
browser_context_args = _fixtures.browser_context_args
shot = _fixtures.shot
