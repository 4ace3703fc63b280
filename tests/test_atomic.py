"""``write_json``: what it writes reads back as it was given, keys sorted, lists of numbers on one line."""

from __future__ import annotations

import json

import pytest

from engine.results import atomic


def test_json_reads_back_as_written_with_numbers_on_one_line(tmp_path):
    data = {
        "b": {"probabilities": [[0.25, 0.75], [1e-06, 0.999999]], "true": [1, 0], "empty": [], "none": {}},
        "a": ["COVID-19/COVID-1.png", "Normal/x [1, 2].png"],
        "flags": [True, None, 3],
        "rows": [{"n": 1}, [1, "two"]],
    }
    path = tmp_path / "d.json"
    atomic.write_json(path, data)
    text = path.read_text()
    assert json.loads(text) == data
    assert text.index('"a"') < text.index('"b"') < text.index('"flags"')
    assert '"probabilities": [[0.25, 0.75], [1e-06, 0.999999]],' in text
    assert '"true": [1, 0]' in text and '"flags": [true, null, 3]' in text
    assert '    "COVID-19/COVID-1.png",\n' in text and '"Normal/x [1, 2].png"' in text
    assert '    [\n      1,\n      "two"\n    ]' in text


def test_json_refuses_nan_before_writing(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "nan.json", {"loss": float("nan")})
    assert not (tmp_path / "nan.json").exists()
