"""Figures for sharing: the HTML report and Hub downloads (over loopback, tests/hubserver.py).

    python benchmarks/bench_share.py

Prints: the Vega bundle's first and later build time, the audit report's build time and size
for the real PEFT sample, and a Hub fetch cold (listing + download) against a pinned, cached
one, for the same sample. Machine load (os.getloadavg) is printed with the figures.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import SAMPLES, FakeHub  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    from lorarank.adapters import load_adapter
    from lorarank.audit import audit_adapter
    from lorarank.charts.report import audit_charts
    from lorarank.documents import audit_document
    from lorarank.report import audit_report, vega_bundle

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    _, first = timed(vega_bundle)
    _, later = timed(vega_bundle)
    print(f"Vega bundle (vl-convert): first call {first:.2f} s, later calls {later * 1e3:.2f} ms")
    report = audit_adapter(load_adapter(SAMPLES / "peft_llama_r8"))
    times = []
    for _ in range(5):
        html, seconds = timed(lambda: audit_report(
            audit_document([report]), charts=audit_charts(report, rule_text="energy 0.99")))
        times.append(seconds)
    print(f"audit report of peft_llama_r8 (14 modules, 3 charts): {sorted(times)[2] * 1e3:.0f} ms "
          f"(median of 5), {len(html.encode()) / 1e6:.2f} MB")

    from huggingface_hub import constants

    from lorarank.hub import HubSettings, fetch_adapter_files

    with FakeHub() as hub, tempfile.TemporaryDirectory() as cache:
        constants.ENDPOINT = hub.url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        settings = HubSettings(cache_dir=Path(cache))
        fetched, cold = timed(fetch_adapter_files, "hf://lorarank-test/peft-llama-r8",
                              settings=settings)
        warm = sorted(timed(fetch_adapter_files, fetched.pinned, settings=settings)[1]
                      for _ in range(5))[2]
        print(f"Hub fetch of peft-llama-r8 ({fetched.total_bytes / 1e3:.0f} kB) over loopback: "
              f"cold {cold:.2f} s, pinned and cached {warm * 1e3:.0f} ms (median of 5, one "
              f"listing request)")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
