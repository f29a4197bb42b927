"""``tests/mutants.py`` keeps working as the library changes: every mutant still finds its piece of source."""

from pathlib import Path

import pytest

from mutants import GROUPS

PACKAGE = Path(__file__).resolve().parents[1] / "gated_vpt"


@pytest.mark.parametrize("mutant", [m for mutants, _ in GROUPS.values() for m in mutants], ids=lambda m: m[0])
def test_every_mutant_still_applies_to_exactly_one_place(mutant):
    name, file, old, new = mutant
    assert (PACKAGE / file).read_text().count(old) == 1, f"update the mutant {name!r}: gated_vpt/{file} changed"
    assert old != new
