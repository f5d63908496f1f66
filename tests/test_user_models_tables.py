"""docs/results.md's tables on users' own Pyro models are what scripts/user_models_tables.py prints from the JSON."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("user_models_tables", ROOT / "scripts" / "user_models_tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def test_results_doc_tables_match_the_committed_json():
    text = tables.DOC.read_text()
    assert tables.splice(text) == text, "run: python scripts/user_models_tables.py --write"


def test_a_stale_table_is_caught():
    text = tables.DOC.read_text()
    stale = text.replace("| true generating PPCA |", "| true generating PPCA (stale) |")
    assert stale != text and tables.splice(stale) != stale


def test_missing_markers_are_an_error():
    with pytest.raises(ValueError, match="no markers"):
        tables.splice("no tables here")
