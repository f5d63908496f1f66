"""docs/reliability.md's bad-input table is what scripts/bad_inputs_table.py prints, and every case is refused."""

import importlib.util
import re
from pathlib import Path

import pyro
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bad_inputs_table", ROOT / "scripts" / "bad_inputs_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture(scope="module")
def printed(script):
    """The table as the script makes it now (every case run once for the module)."""
    return script.table()


def test_the_documented_table_is_what_the_script_prints(script, printed):
    text = script.DOC.read_text()
    assert script.splice(text, printed) == text, (
        "docs/reliability.md's bad-input table is stale: run `python scripts/bad_inputs_table.py --write`"
    )


def test_every_case_is_refused_with_a_value_or_type_error(script, printed):
    rows = printed.splitlines()[2:]
    assert len(rows) == len(script.CASES) >= 39
    for name, row in zip(script.CASES, rows):
        assert row.startswith(f"| {name} | `"), row
        error = re.match(r"\| .* \| `(\w+)`: ", row).group(1)
        # NonFiniteLossError is a ValueError.
        assert error in ("ValueError", "TypeError", "NonFiniteLossError"), row
        assert "Trace Shapes" not in row and "\n" not in row


def test_the_new_cases_name_their_argument(printed):
    expected = {
        "IWAE num_particles = -3": "num_particles must be >= 1, got -3",
        "IWAE plate not a str": "plate must be the name of the data plate (a str) or None, got int",
        "IWAE non-reparameterized guide site": "guide site 'z' (Bernoulli) is not reparameterizable",
        "IWAE latent sites in two unrelated plates": "pass TraceIWAE_ELBO(plate=<name of the data plate>)",
        "empiricalize: a site the model lacks": "no sample site named 'z'",
        "empiricalize: a site outside the plate": "is not inside a plate named 'data'",
        "empiricalize: a discrete site": "is discrete (Categorical)",
        "empiricalize: rows missing for a minibatch plate": "pass the minibatch's row indices as rows=",
        "empiricalize: rows of another length than the plate": "rows has 3 indices but the model's plate 'data' has size 4",
        "empiricalize: encoder of the wrong output size": "encoder maps a row of data to shape (3,)",
        "empiricalize: a global latent without a guide": "a global latent needs a guide",
    }
    rows = {row.split(" | ")[0][2:]: row for row in printed.splitlines()[2:]}
    for name, fragment in expected.items():
        assert fragment in rows[name], rows[name]


def test_a_stale_table_is_caught_and_rewritten(script, printed, tmp_path):
    doc = tmp_path / "reliability.md"
    text = f"# x\n\n<!-- generated:bad_inputs -->\n\n{printed}\n\n<!-- /generated:bad_inputs -->\n\nafter\n"
    assert script.splice(text, printed) == text
    stale = text.replace("got -3", "got -4")
    assert stale != text and script.splice(stale, printed) == text
    doc.write_text(stale)
    assert script.main(["--check", "--doc", str(doc)]) == 1
    with pytest.raises(ValueError, match="exactly once"):
        script.splice("no markers here", printed)


def test_adding_a_case_is_one_entry_and_the_cell_is_clean(script):
    def raises_long():
        raise ValueError("x" * 400 + " | a\nb")

    cases = {"made up": lambda s: int("seven"), "long": lambda s: raises_long(), "fine": lambda s: None}
    table = script.table(cases)
    lines = table.splitlines()
    assert lines[:2] == ["| bad input | what it gets |", "|---|---|"]
    assert lines[2] == "| made up | `ValueError`: invalid literal for int() with base 10: 'seven' |"
    cell = lines[3].split(" | ", 1)[1]
    assert len(cell) == len("`ValueError`: ") + script.MAX_MESSAGE + 2 and cell.endswith("... |")
    assert lines[4] == "| fine | (no error) |"


def test_running_the_cases_leaves_pyro_as_it_was(script):
    nan_case = script.CASES["decoder turns NaN during training"]  # turns validation off, trains
    for before, case in ((True, nan_case), (False, lambda s: None)):  # the script turns it on per case
        pyro.clear_param_store()
        pyro.enable_validation(before)
        pyro.param("kept", torch.tensor(3.0))
        script.table({"case": case})
        assert pyro.poutine.util.is_validation_enabled() == before
        assert pyro.param("kept").item() == 3.0 and list(pyro.get_param_store().keys()) == ["kept"]
    pyro.enable_validation(True)
