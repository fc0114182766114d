"""lorarank.documents: the JSON, CSV, rows and typed lists every output shares."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from lorarank import ConfigError
from lorarank.documents import (MODULE_COLUMNS, csv_text, json_bytes, json_clean, json_text,
                                metadata_items, module_row, parse_numbers, short_name, split_list)


class TestShortName:
    @pytest.mark.parametrize("name, short", [
        ("base_model.model.model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj"),
        ("lora_unet_down_0_conv", "lora_unet_down_0_conv"),
        ("", "(unnamed)"),
    ])
    def test_short_name(self, name, short):
        """PEFT's wrapper prefix is dropped for display; other names stay; no name is said."""
        assert short_name(name) == short


class TestJson:
    def test_clean(self):
        """Keys become strings, tuples lists, non-finite floats null, other objects strings."""
        doc = {1: (1.5, math.nan), "x": {"inf": -math.inf, "ok": [True, None, "s", 3]},
               "obj": np.dtype("float32")}
        assert json_clean(doc) == {"1": [1.5, None], "x": {"inf": None, "ok": [True, None, "s", 3]},
                                   "obj": "float32"}
        json_text(json_clean(doc))  # strict JSON after cleaning

    def test_text_is_strict(self):
        """The CLI's text refuses NaN (clean first) and ends with one newline."""
        assert json_text({"a": 1}) == '{"a": 1}\n'
        with pytest.raises(ValueError):
            json_text({"a": math.nan})
        assert json_bytes({"a": [1]}) == b'{\n  "a": [\n    1\n  ]\n}'

    def test_metadata_items(self):
        """Strings as they are, other values as JSON, long ones cut, white space folded on ask."""
        items = metadata_items({"a": "x  y", "b": {"k": [1, 2]}, "c": "z" * 50}, limit=10,
                               one_line=True)
        assert items == [("a", "x y"), ("b", '{"k": [...'), ("c", "zzzzzzz...")]


class TestCsv:
    def test_same_bytes_as_pandas(self):
        """The one CSV writer writes what pandas' to_csv(index=False) writes (the oracle),
        for floats, whole numbers, missing values, booleans and text needing quotes."""
        frame = pd.DataFrame({
            "module": ["a,b", 'say "hi"', "line\nbreak", "plain"],
            "sigma": [0.1, 1e-17, 2.0, math.nan],
            "r": [1, 2, 3, 4],
            "kept": pd.array([1, None, 3, None], dtype="Int64"),
            "flag": [True, False, True, False],
            "text": ["x", None, "", "y"],
        })
        from ui.common import frame_csv

        assert frame_csv(frame) == frame.to_csv(index=False).encode("utf-8")

    def test_rows_by_name_or_position(self):
        """Mappings are read by column (a missing key is empty), sequences in column order."""
        assert csv_text([{"a": 1}, [2, 3]], columns=["a", "b"]) == "a,b\n1,\n2,3\n"


class TestModuleRow:
    def test_report_and_document_agree(self):
        """A module's row is the same built from the report or from its --json document (which
        has no truncation error)."""
        from lorarank.adapters import load_adapter_bytes
        from lorarank.audit import audit_adapter

        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        np.savez(buf, **{"base_model.model.q.A": rng.normal(size=(6, 20)),
                         "base_model.model.q.B": rng.normal(size=(12, 6))})
        report = audit_adapter(load_adapter_bytes({"a.npz": buf.getvalue()}))
        m = report.modules[0]
        row, from_doc = module_row(m), module_row(json.loads(json.dumps(m.to_dict())))
        assert set(MODULE_COLUMNS) <= set(row)
        assert row["module"] == "q" and row["shape"] == "12 x 20" and row["r"] == 6
        assert row["sigma_1"] == m.singular_values[0]
        assert row["top singular values"].endswith(", ...")
        assert row["truncation error"] == m.truncation_error and from_doc["truncation error"] is None
        assert {k: v for k, v in row.items() if k != "truncation error"} == {
            k: v for k, v in from_doc.items() if k != "truncation error"}


class TestParseNumbers:
    @pytest.mark.parametrize("text, kw, expected", [
        ("2, 4;16", dict(whole=True, low=1), (2, 4, 16)),
        ("0.5,1e-3", dict(whole=False, positive=True), (0.5, 0.001)),
        ("8.0", dict(whole=True, low=1, high=10), (8,)),
    ])
    def test_parses(self, text, kw, expected):
        """Entries separated by commas or semicolons, in the order typed."""
        assert parse_numbers(text, name="x", item="x", example="1", **kw) == expected

    @pytest.mark.parametrize("text, kw, message", [
        ("", dict(whole=True, low=1), "`ranks` should list at least one rank, e.g. 2,4"),
        ("2,x", dict(whole=True, low=1),
         "`ranks` should be whole numbers of at least 1 separated by commas, got 'x' in '2,x'"),
        ("3,0", dict(whole=False, positive=True),
         "`ranks` should be positive numbers separated by commas, got '0' in '3,0'"),
        ("5,30000", dict(whole=True, low=1, high=20000),
         "`ranks` should be whole numbers from 1 to 20,000 separated by commas, got '30000' in "
         "'5,30000'"),
        ("1,2,3", dict(whole=True, max_count=2, too_many="ranks; the app fits at most 2"),
         "`ranks` lists 3 ranks; the app fits at most 2"),
    ])
    def test_errors_name_the_entry(self, text, kw, message):
        """One sentence naming the bad entry and the whole text."""
        with pytest.raises(ConfigError) as err:
            parse_numbers(text, name="ranks", item="rank", example="2,4", **kw)
        assert str(err.value) == message

    def test_split_list(self):
        """Stripped entries, empties dropped; separators chosen by the caller."""
        assert split_list(" a, ,b;c ") == ["a", "b", "c"]
        assert split_list("a;b,c", separators=",") == ["a;b", "c"]
