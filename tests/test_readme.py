"""The README's set-up commands are the ones CI runs, and the locks hold what the bounds allow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _code_blocks(text: str) -> list[list[str]]:
    return [[line for line in block.strip().splitlines()]
            for block in re.findall(r"^```\n(.*?)^```", text, flags=re.S | re.M)]


def _locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)( ;[^\\]*)?", line)
        if m and (m.group(3) is None or ">= '3.12'" not in m.group(3)):  # the CPython 3.11 pins
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


class TestReadmeCommands:
    def test_ci_runs_the_readme_test_commands(self):
        """The README's test block (install, then pytest) is exactly what .ci/run executes."""
        blocks = _code_blocks((ROOT / "README.md").read_text())
        tests = [b for b in blocks if any("requirements-test.txt" in line for line in b)]
        assert tests, "the README has no block installing requirements-test.txt"
        install, run = tests[0]
        assert (install, run) == ("pip install -r requirements-test.txt", "python -m pytest")
        ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
        assert install in ci and run in ci
        assert "python3 -m venv \"$venv\"" in ci  # in a fresh virtual environment

    def test_app_block_installs_the_lock(self):
        """The README's run block installs the app's lock, then starts the app."""
        blocks = _code_blocks((ROOT / "README.md").read_text())
        assert ["pip install -r requirements.txt", "streamlit run app.py"] in blocks


class TestLocks:
    @pytest.mark.parametrize("name", ["requirements", "requirements-test"])
    def test_lock_satisfies_its_bounds(self, name):
        """Every requirement of the .in file is pinned in its lock, at a version its bounds allow."""
        pins = _locked(ROOT / f"{name}.txt")
        lines = []
        for path in (ROOT / f"{name}.in", ROOT / "requirements.in"):
            lines += [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        for line in filter(None, lines):
            if line.startswith("-r"):
                continue
            req = Requirement(line)
            key = req.name.lower().replace("_", "-")
            assert key in pins, f"{req.name} is not in {name}.txt"
            assert req.specifier.contains(pins[key], prereleases=True), (req, pins[key])

    def test_every_pin_has_hashes(self):
        """pip installs the locks in hash-checking mode: every pinned release carries hashes."""
        for name in ("requirements.txt", "requirements-test.txt"):
            text = (ROOT / name).read_text()
            for block in re.split(r"\n(?=[A-Za-z0-9])", text):
                if "==" in block.splitlines()[0]:
                    assert "--hash=sha256:" in block, block.splitlines()[0]

    def test_internals_are_capped(self):
        """Libraries whose internals the app patches are capped below their next minor release."""
        bounds = {Requirement(ln.split("#")[0]).name: Requirement(ln.split("#")[0]).specifier
                  for ln in (ROOT / "requirements.in").read_text().splitlines()
                  if ln.split("#")[0].strip()}
        for name in ("streamlit", "starlette"):
            assert any(s.operator == "<" for s in bounds[name]), name


DOCS = ROOT / "docs"


class TestDocs:
    def test_readme_is_a_five_minute_read(self):
        """The README stays short (issue 21): reference material goes to docs/."""
        assert len((ROOT / "README.md").read_text().splitlines()) <= 250

    @pytest.mark.parametrize("path", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))],
                             ids=lambda p: p.name)
    def test_relative_links_resolve(self, path):
        """Every relative link (and image) in the README and docs/ points to a file that exists."""
        text = path.read_text()
        targets = re.findall(r"\]\(([^)\s]+)\)", text)
        local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t.split("#")[0]]
        missing = [t for t in local if not (path.parent / t).exists()]
        assert not missing, missing

    def test_benchmark_sections_name_machine_and_date(self):
        """Each benchmark section heading names the machine and the date its figures come from."""
        heads = [ln for ln in (DOCS / "benchmarks.md").read_text().splitlines()
                 if ln.startswith("### ")]
        assert heads
        for head in heads:
            assert re.search(r"\d{4}-\d{2}-\d{2}", head), head
            assert re.search(r"AMD EPYC|Intel Xeon", head), head
