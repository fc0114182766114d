"""The hostile corpus of issue 12 ("Seen"), each case through BOTH the CLI and the page.

Every case is a set of files (built here with the real writers, or byte by byte where the
point is a lying file) and the sentence it must give:

- CLI: ``python -m lorarank audit|compare|resize ...`` exits 2 with exactly one line
  ``lorarank: error: ...`` on stderr naming the problem, no traceback, within a time bound
  (a subprocess timeout) and a memory bound (the child's own peak ``VmHWM``).
- Page: the Adapter audit page (AppTest, the real script) with the files uploaded shows
  exactly one error box with that sentence, no exception element and no traceback text.

Cases whose answer is not an error (a pattern that used to hang but matches nothing, an
all-zero adapter) check the exact answer the same two ways. CLI-only cases (``resize -o``
through a dangling symlink, values near 1e160) and the page's own traceback guard are at
the end.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from safetensors.numpy import save
from streamlit.testing.v1 import AppTest

from ui import audit as audit_ui
from ui.common import md_plain
from corpus23 import npy, peft, zeros_member

ROOT = Path(__file__).resolve().parents[2]
PEFT = "base_model.model."
PAGE = "pages/3_Adapter_audit.py"
#: Bounds of one CLI run on a hostile file (a loaded 2-core machine: generous on time).
CLI_SECONDS = 60
CLI_PEAK_MB = 600


def pair(name: str = "model.layers.0.self_attn.q_proj", r: int = 4, *, d_out: int = 6,
         d_in: int = 8, zero: bool = False, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((r, d_in)) * scale
    b = np.zeros((d_out, r)) if zero else rng.standard_normal((d_out, r)) * scale
    return {f"{PEFT}{name}.lora_A.weight": a.astype(np.float32 if scale < 1e30 else np.float64),
            f"{PEFT}{name}.lora_B.weight": b.astype(np.float32 if scale < 1e30 else np.float64)}


def duplicated_npz() -> dict[str, bytes]:
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("q.A.npy", npy(np.ones((2, 3))))
            zf.writestr("q.B.npy", npy(np.ones((4, 2))))
            zf.writestr("q.A.npy", npy(np.zeros((2, 3))))
    return {"delta.npz": buf.getvalue()}


def many_member_npz(n: int = 100_000) -> dict[str, bytes]:
    buf = io.BytesIO()
    tiny = npy(np.ones(1, np.float32))
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"m{i}.A.npy", tiny)
    return {"many.npz": buf.getvalue()}


def bomb_npz() -> dict[str, bytes]:
    """A 0.6 MiB .npz whose B member declares 600 MiB of float64 zeros (deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("q.A.npy", npy(np.ones((4, 64))))
        zeros_member(zf, "q.B.npy", (600 * 2**20 // 8 // 4, 4))
    return {"bomb.npz": buf.getvalue()}


def many_tensor_safetensors(n: int = 100_000) -> dict[str, bytes]:
    import struct

    raw = ("{" + ",".join(f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
                          for i in range(n)) + "}").encode()
    return {"tiny.safetensors": struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * n)}


def mlx_scale_zero() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    data = save({"model.layers.0.self_attn.q_proj.lora_a": rng.standard_normal((8, 4)).astype(np.float32),
                 "model.layers.0.self_attn.q_proj.lora_b": rng.standard_normal((4, 6)).astype(np.float32)})
    config = {"fine_tune_type": "lora", "lora_parameters": {"rank": 4, "scale": 0}}
    return {"adapters.safetensors": data, "adapter_config.json": json.dumps(config).encode()}


PHISH = "x`](https://evil.example/login)[Session expired - sign in again`![i](https://evil.example/p.png)"


@dataclass(frozen=True)
class Case:
    """Files and the sentence they must give (in the CLI's stderr and the page's error box)."""

    id: str
    files: Callable[[], dict[str, bytes]]
    said: str


CASES = [
    Case("exponential-rank-pattern",  # Seen 1: one config froze the server for everyone
         lambda: peft(pair("model." + "a" * 40), {"r": 4, "lora_alpha": 8, "rank_pattern": {"(a|aa)+b": 2}}),
         "`rank_pattern` key '(a|aa)+b' takes over 50 ms to match one module name"),
    Case("npz-zip-bomb",  # Seen 2: a small .npz took the server to 4.2 GB
         bomb_npz, "would unpack to"),
    Case("safetensors-100k-tiny-tensors",  # Seen 2/3: 1e6 tiny tensors, 2 GB and a minute
         many_tensor_safetensors, "declares 100,000 tensors; lorarank reads at most 50,000"),
    Case("npz-100k-members",  # Seen 3
         many_member_npz, "has 100,000 members; lorarank reads at most 50,000"),
    Case("phishing-tensor-name",  # Seen 4: a backtick in a tensor name broke out of the code span
         lambda: peft({f"{PEFT}{PHISH}.lora_A.weight": np.ones((4, 8), np.float32)}, {"r": 4, "lora_alpha": 8}),
         "has no partner B factor"),
    Case("config-100k-deep",  # Seen 5: RecursionError on the CLI, a traceback on the page
         lambda: peft(pair(), b'{"r": 4, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
         "nests 100,001 levels deep; lorarank reads at most 64"),
    Case("lora-alpha-1e300",  # Seen 5/6: a traceback in audit --json, "nan %" with exit 0
         lambda: peft(pair(), {"r": 4, "lora_alpha": 1e300}),
         "lora_alpha = 1e+300 gives scale 2.5e+299, beyond lorarank's bound"),
    Case("npz-duplicated-member",  # Seen 6: silently used the last copy
         duplicated_npz, "member 'q.A.npy' appears twice in the archive"),
    Case("mlx-scale-zero",  # Seen 6: audited as all zero
         mlx_scale_zero, "lora_parameters.scale is 0, so mlx-lm adds nothing"),
    Case("use-rslora-string",  # Seen 6: "false" taken as true without a word
         lambda: peft(pair(), {"r": 4, "lora_alpha": 8, "use_rslora": "false"}),
         "`use_rslora` should be true or false, got 'false' (PEFT would treat 'false' as true)"),
]


def write(files: dict[str, bytes], folder: Path) -> list[str]:
    """The files in ``folder``; the CLI argument: the folder for a PEFT pair, else the file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if "adapter_config.json" in files:
        return [str(folder)]
    return [str(folder / name) for name in files]


def run_cli(*args: str, timeout: float = CLI_SECONDS) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI in a child; returns its result and its own peak resident memory (MB)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak"
        code = textwrap.dedent(f"""
            import atexit, sys
            def peak():  # this process image's own peak (ru_maxrss carries the parent's)
                for line in open('/proc/self/status'):
                    if line.startswith('VmHWM:'):
                        open({str(peak_file)!r}, 'w').write(line.split()[1])
            atexit.register(peak)
            sys.argv = ['lorarank', *{list(args)!r}]
            from lorarank.cli import main
            sys.exit(main())
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, timeout=timeout)
        kib = peak_file.read_text() if peak_file.exists() else ""
    return out, int(kib) / 1024 if kib else float("nan")


def assert_one_line_error(out: subprocess.CompletedProcess, said: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("lorarank: error: "), out.stderr[-2000:]
    assert said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def open_audit_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page(PAGE)
    return at.run()


def upload(at: AppTest, files: dict[str, bytes], key: str = audit_ui.UPLOAD_KEY) -> AppTest:
    at.file_uploader(key=key).set_value([(n, d, "application/octet-stream") for n, d in files.items()])
    return at.run()


def page_text(at: AppTest) -> str:
    """Every text the page shows (markdown, captions, alerts) in one string."""
    parts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def assert_page_one_error(at: AppTest, said: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    shown = [md_plain(e.value) for e in at.error]
    assert len(shown) == 1, shown
    assert said in shown[0], shown[0]
    assert "\n" not in shown[0].strip()
    assert "Traceback" not in page_text(at) and 'File "' not in page_text(at)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(case: Case, tmp_path):
    """One line ``lorarank: error: ...``, exit 2, in bounded time and memory."""
    out, peak = run_cli("audit", "--json", *write(case.files(), tmp_path / "in"))
    assert_one_line_error(out, case.said)
    assert peak < CLI_PEAK_MB, peak


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_page(case: Case):
    """One error box with the sentence; no exception element, no traceback text."""
    at = upload(open_audit_page(), case.files())
    assert_page_one_error(at, case.said)


def test_phishing_name_renders_inert():
    """The error quoting the hostile tensor name renders no link and no image."""
    at = upload(open_audit_page(), CASES[4].files())
    (box,) = at.error
    assert PHISH not in box.value  # every markdown character of it is escaped
    assert "](https" not in box.value.replace("\\]", "").replace("\\(", "")


# ------------------------------------------------------------------- exact answers, not errors
def test_nested_quantifier_pattern_matches_nothing_both_ways(tmp_path):
    """``(.+)+z`` used to hang the server and the CLI; it matches nothing: r 4, scale 8/4."""
    files = peft(pair(), {"r": 4, "lora_alpha": 8, "rank_pattern": {"(.+)+z": 2}})
    out, peak = run_cli("audit", "--json", *write(files, tmp_path / "in"))
    assert out.returncode == 0, out.stderr
    (module,) = json.loads(out.stdout)["modules"]
    assert (module["rank"], module["scale"]) == (4, 2.0)
    assert peak < CLI_PEAK_MB
    at = upload(open_audit_page(), files)
    assert not at.exception and not at.error
    table = next(d.value for d in at.dataframe if "module" in d.value.columns)
    assert list(table["r"]) == [4] and list(table["scale s"]) == [2.0]


def test_all_zero_adapter_is_named_both_ways(tmp_path):
    """An all-zero adapter was "rank 0, 1,024 -> 0 params" without a word; now a warning."""
    files = peft(pair(zero=True), {"r": 4, "lora_alpha": 8})
    out, _ = run_cli("audit", "--json", *write(files, tmp_path / "in"))
    assert out.returncode == 0, out.stderr
    warnings = json.loads(out.stdout)["summary"]["warnings"]
    assert any("zero" in w for w in warnings), warnings
    at = upload(open_audit_page(), files)
    assert not at.exception
    assert any("zero" in md_plain(w.value) for w in at.warning), [w.value for w in at.warning]


def test_two_all_zero_adapters_compare_both_ways(tmp_path):
    """Two all-zero adapters compared as phi = 1, "largely the same"; now: undefined."""
    files = peft(pair(zero=True), {"r": 4, "lora_alpha": 8})
    a, b = write(files, tmp_path / "a"), write(files, tmp_path / "b")
    out, _ = run_cli("compare", *a, *b)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "zero" in out.stderr and "largely the same" not in out.stdout + out.stderr
    at = upload(open_audit_page(), files)   # the tabs' settings are drawn once an adapter is loaded
    at.toggle(key=audit_ui.COMPARE_KEY).set_value(True)
    at = upload(at.run(), files, key=audit_ui.UPLOAD_B_KEY)
    assert not at.exception
    text = md_plain(page_text(at))
    assert "largely the same" not in text
    assert "zero" in text


# ----------------------------------------------------------------------------------- CLI only
def test_resize_near_1e160(tmp_path):
    """Factors near 1e160 (their product overflows float64): one sentence, not LinAlgError."""
    files = peft(pair(scale=1e160), {"r": 4, "lora_alpha": 4})
    out, peak = run_cli("resize", *write(files, tmp_path / "in"), "--rank", "2",
                        "-o", str(tmp_path / "out.safetensors"))
    assert_one_line_error(out, "")
    assert "LinAlgError" not in out.stderr
    assert not (tmp_path / "out.safetensors").exists()
    assert peak < CLI_PEAK_MB


def test_resize_through_dangling_symlink_needs_force(tmp_path):
    """``-o`` naming a dangling symlink wrote through it without --force; now refused."""
    files = peft(pair(r=4, d_out=16, d_in=16), {"r": 4, "lora_alpha": 8})
    source = write(files, tmp_path / "in")
    for name in ("out.npz", "folder"):  # one file (.npz), or a PEFT folder
        target = tmp_path / "elsewhere" / name
        target.parent.mkdir(exist_ok=True)
        link = tmp_path / name
        link.symlink_to(target)
        out, _ = run_cli("resize", *source, "--rank", "2", "-o", str(link))
        assert_one_line_error(out, str(link))
        assert "already exists" in out.stderr or "not a folder" in out.stderr
        assert not target.exists() and link.is_symlink()
    # With --force the .npz is written (through the link, as asked).
    out, _ = run_cli("resize", *source, "--rank", "2", "-o", str(tmp_path / "out.npz"), "--force")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "elsewhere" / "out.npz").exists()


def test_deep_config_page_shows_no_traceback_even_unhandled():
    """The page's own guard: Streamlit is configured to show no error details, so even an
    exception nobody caught would show no traceback or server path."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
