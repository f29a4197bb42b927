"""The measured figures that several documents repeat say the same thing everywhere: the embedded default run's
test accuracy (README, docs/TRAINING.md, the backbone's card) and the method comparison's table (README,
docs/TRAINING.md). Re-measuring them is a run of minutes; keeping the copies in step is checked here."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TRAINING = (ROOT / "docs" / "TRAINING.md").read_text()
ASSET_CARD = (ROOT / "assets" / "mae-tiny" / "README.md").read_text()
PERCENT = r"(\d+\.\d)%"


def _one(pattern: str, text: str, where: str) -> tuple[str, ...]:
    found = re.findall(pattern, text)
    assert len(found) == 1, f"{where}: expected one match of {pattern!r}, found {found}"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def test_the_default_runs_accuracy_is_the_same_in_every_document():
    seeds = _one(rf"\*\*{PERCENT} / {PERCENT} test accuracy \(seeds 0 / 1\)\*\*", README, "README")
    assert _one(rf"#.*test accuracy {PERCENT}, then the per-block gates", README, "README quick start") == seeds[:1]
    assert (_one(rf"\*\*test accuracy {PERCENT}\*\* \(seed 0", TRAINING, "docs/TRAINING.md")
            + _one(rf"\*\*{PERCENT}\*\* with `--seed 1`", TRAINING, "docs/TRAINING.md")) == seeds
    assert _one(rf"default run reaches {PERCENT} / {PERCENT} test accuracy \(seeds\s+0 / 1", ASSET_CARD, "mae-tiny card") == seeds
    # the comparison's own note on the longer default run
    assert _one(rf"gated \+ temperature reaches {PERCENT} and {PERCENT} \(seeds 0, 1\)", TRAINING, "docs/TRAINING.md") == seeds


def test_the_method_comparison_table_is_the_same_in_readme_and_training_doc():
    row = re.compile(r"^\| ([^|]+) \| (\d+\.\d+ ± \d+\.\d+) \| ([\d,]+) \|", re.M)
    readme, training = row.findall(README), row.findall(TRAINING)
    assert len(readme) == 6 and readme == training
