"""ui.compat: the fixes of library internals apply within their tested versions and fall back to
the library's own behaviour outside them, without breaking a page.

Out-of-range cases run in a fresh interpreter: the fixes patch classes for the whole process, and
the point is what happens when they never were applied.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.version import Version

from ui import compat

ROOT = Path(__file__).resolve().parents[1]


def _locked(name: str) -> Version:
    text = (ROOT / "requirements.txt").read_text()
    return Version(re.search(rf"^{name}==(\S+)", text, flags=re.M).group(1))


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter at the repository root; fail with its output."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# Imported by the fresh interpreters: every fix sees a library version no fix was tested on.
_OUT_OF_RANGE = """
import logging
from packaging.version import Version
from ui import compat

logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
compat.installed_version = lambda library: Version("99.0")
"""


class TestRanges:
    def test_locks_are_in_every_tested_range(self):
        """The locked Streamlit and Starlette are versions every fix was tested on (moving a
        lock past a range fails here until the fix is checked on the new version)."""
        for fix in compat.FIXES.values():
            assert compat.usable(fix.name, version=_locked(fix.library)), fix

    def test_installed_versions_are_in_range(self):
        """The suite runs against versions the fixes apply to, so the in-range tests mean it."""
        for fix in compat.FIXES.values():
            assert compat.usable(fix.name), (fix, compat.installed_version(fix.library))

    @pytest.mark.parametrize("name, version, ok", [
        ("sharing_deepcopy", "1.67.0", True), ("sharing_deepcopy", "1.67.4", True),
        ("sharing_deepcopy", "1.68.0", False), ("sharing_deepcopy", "1.66.9", False),
        ("spool_in_memory", "1.10.0", True), ("spool_in_memory", "1.11.0", False),
        ("spool_in_memory", "2.0", False),
    ])
    def test_usable(self, name, version, ok):
        """A version inside the fix's range is usable; one outside is not."""
        assert compat.usable(name, version=Version(version)) is ok

    def test_every_fix_says_when_it_can_go(self):
        """Each fix names its library, tested versions, the internals it uses and when to drop it."""
        for fix in compat.FIXES.values():
            assert fix.library in ("streamlit", "starlette")
            assert fix.tested.startswith(">=") and "<" in fix.tested
            assert fix.uses and fix.remove_when.startswith("when ")


class TestInRange:
    def test_upload_fixes_are_applied(self):
        """Within the tested versions the parser keeps parts in memory, whole reads share the
        buffer and uploader copies share the bytes."""
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartParser
        from streamlit.runtime.uploaded_file_manager import UploadedFile

        from ui.uploads import keep_uploads_in_memory

        keep_uploads_in_memory()
        assert MultiPartParser.spool_max_size > 256 << 20
        assert UploadFile.read._lorarank_shares
        assert UploadedFile.__deepcopy__._lorarank_shares


    def test_deep_link_base_is_served(self):
        """Within the tested versions the app's server puts DeepLinkBase in front of Streamlit."""
        from ui import serving

        assert [m.cls for m in serving.middleware()] == [serving.DeepLinkBase]


class TestOutOfRange:
    def test_deep_link_base_falls_back(self):
        """Outside the tested versions the server gets no middleware (the front end's own first
        probe), and one warning names the fix, the version and the range."""
        proc = _run(_OUT_OF_RANGE + """
from ui import serving
assert serving.middleware() == [] and serving.middleware() == []
print("ok")
""")
        assert proc.stdout.strip().endswith("ok")
        warnings = [ln for ln in proc.stderr.splitlines() if "ui.compat WARNING" in ln]
        assert len(warnings) == 1 and "'deep_link_base' fix" in warnings[0] and "99.0" in warnings[0], proc.stderr

    def test_upload_fixes_fall_back_and_log_once(self):
        """Outside the tested versions nothing is patched, an upload parses with Starlette's own
        code, and each fix logs one warning naming itself, the version and the range."""
        proc = _run(_OUT_OF_RANGE + """
import asyncio, io
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from streamlit.runtime.uploaded_file_manager import UploadedFile
from ui.uploads import keep_uploads_in_memory, start_janitor
from ui.guard import session_alive

default = MultiPartParser.spool_max_size
read = UploadFile.read
keep_uploads_in_memory()
keep_uploads_in_memory()
assert MultiPartParser.spool_max_size == default
assert UploadFile.read is read and not hasattr(read, "_lorarank_shares")
assert "__deepcopy__" not in UploadedFile.__dict__
assert session_alive()
start_janitor()

payload = bytes(range(256)) * 9000
body = (b'--b\\r\\nContent-Disposition: form-data; name="f"; filename="a.npz"\\r\\n\\r\\n'
        + payload + b"\\r\\n--b--\\r\\n")
chunks = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])

async def receive():
    chunk = next(chunks, None)
    return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

async def main():
    scope = {"type": "http", "method": "PUT",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}
    form = await Request(scope, receive).form()
    (upload,) = form.values()
    return await upload.read()

assert asyncio.run(main()) == payload
print("ok")
""")
        assert proc.stdout.strip().endswith("ok")
        warnings = [ln for ln in proc.stderr.splitlines() if "ui.compat WARNING" in ln]
        names = sorted(re.search(r"the '(\w+)' fix", ln).group(1) for ln in warnings)
        assert names == ["script_session", "sharing_deepcopy", "sharing_read", "spool_in_memory"], (
            proc.stderr)
        assert all("99.0" in ln and "tested on (>=" in ln for ln in warnings)

    def test_pages_still_work(self):
        """With every fix out of range, an upload to the Adapter audit page (its files deep-copied
        by Streamlit's own code on every run) is read and shown, and the Rank sweep runs."""
        _run(_OUT_OF_RANGE + """
from streamlit.testing.v1 import AppTest
import numpy as np
import io

rng = np.random.default_rng(0)
buf = io.BytesIO()
np.savez(buf, **{"layer.A": rng.normal(size=(4, 32)), "layer.B": rng.normal(size=(16, 4))})
at = AppTest.from_file("app.py", default_timeout=60).run()
at.switch_page("pages/3_Adapter_audit.py")
at.run()
at.file_uploader(key="audit_upload").set_value([("a.npz", buf.getvalue(), "application/octet-stream")])
at.run()
assert not at.exception, at.exception
assert any("Loaded" in m.value for m in at.markdown), [m.value for m in at.markdown][:5]
at.switch_page("pages/1_Rank_sweep.py")
at.run()
assert not at.exception, at.exception
assert any(m.value.startswith("| r |") and "optimum" in m.value for m in at.markdown), "the sweep drew no table"
print("ok")
""", timeout=240)
