"""CI runs the README's test command unchanged: keep .ci/run and the README in step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("pip install -e")]


def test_ci_runs_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text())
    ci = _commands((ROOT / ".ci" / "run").read_text())
    test_command = [c for c in readme if "pytest" in c]
    assert len(test_command) == 1, readme
    assert ci == test_command
    pair = "torch==2.14.1 torchvision==0.29.1"  # the standard pair: timm imports torchvision
    assert f"pip install -q {pair}" in (ROOT / ".ci" / "run").read_text()
    assert f"pip install {pair}" in (ROOT / "README.md").read_text()


def test_readme_quick_start_runs_the_main_job_through_accelerate():
    readme = _commands((ROOT / "README.md").read_text())
    launch = "accelerate launch --config_file examples/accelerate_config.yaml examples/train_image_classification.py"
    assert any(launch in c for c in readme)
    assert (ROOT / "examples" / "train_image_classification.py").is_file()
    assert (ROOT / "examples" / "accelerate_config.yaml").is_file()
