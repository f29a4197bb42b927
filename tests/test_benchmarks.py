"""The benchmark scripts' --quick modes run end to end and report what they promise (never how fast)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import parse_table  # noqa: E402
from benchmarks.setups import CONFIGS, SIZES  # noqa: E402

TINY = SIZES["tiny"]
PATCHES = (TINY["image_size"] // TINY["patch_size"]) ** 2
D, L, P, CLASSES = TINY["hidden_size"], TINY["num_hidden_layers"], 10, 100
HEAD = D * CLASSES + CLASSES


def run_quick(module: str, tmp_path: Path, *extra: str) -> str:
    out = tmp_path / f"{module}.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick", "--device", "cpu", "--out", str(out), *extra],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )
    return out.read_text()


def full_ft_params() -> int:
    layer = 4 * (D * D + D) + 2 * (D * TINY["intermediate_size"]) + TINY["intermediate_size"] + D + 4 * D
    embeddings = 3 * TINY["patch_size"] ** 2 * D + D + D + (PATCHES + 1) * D
    return embeddings + L * layer + 2 * D + HEAD


EXPECTED_TRAINABLE = {
    "ideal": P * D + HEAD,
    "full_ft": full_ft_params(),
    "linear_probe": HEAD,
    "lora": L * 2 * 8 * (D + D) + HEAD,
    "vpt_shallow": P * D + HEAD,
    "vpt_deep": L * P * D + HEAD,
    "gated": P * D + (L - 1) + HEAD,
    "gated_temp": P * D + (L - 1) + L + HEAD,
}


@pytest.mark.slow
def test_bench_step_quick_reports_every_configuration_and_attention(tmp_path):
    markdown = run_quick("bench_step", tmp_path)
    headers, rows = parse_table(markdown, "config")
    assert headers == ["config", "attention", "train ms", "train x ideal", "train x full FT", "train spread",
                       "infer ms", "infer x ideal", "infer x full FT", "infer spread", "train peak MiB",
                       "infer peak MiB", "trainable params", "adapter bytes"]
    assert [(row[0], row[1]) for row in rows] == [(c, a) for c in CONFIGS for a in ("eager", "sdpa")]
    column = {name: headers.index(name) for name in headers}
    by_config = {(row[0], row[1]): row for row in rows}
    for (config, attention), row in by_config.items():
        assert int(row[column["trainable params"]].replace(",", "")) == EXPECTED_TRAINABLE[config], config
        assert float(row[column["train peak MiB"]]) > 0 and float(row[column["infer peak MiB"]]) > 0
        for kind in ("train", "infer"):
            assert float(row[column[f"{kind} ms"]]) > 0
            assert row[column[f"{kind} x ideal"]] == "1.000x" or config != "ideal"
            assert row[column[f"{kind} x full FT"]] == "1.000x" or config != "full_ft"
            assert float(row[column[f"{kind} x ideal"]].rstrip("x")) > 0
    # Full fine-tuning stores every weight; prompt tuning only prompts and head, at least 4 bytes per value.
    stored = {config: int(by_config[config, "sdpa"][column["adapter bytes"]].replace(",", "")) for config in CONFIGS}
    assert stored["full_ft"] >= 4 * EXPECTED_TRAINABLE["full_ft"]
    assert 4 * EXPECTED_TRAINABLE["gated_temp"] <= stored["gated_temp"] < stored["full_ft"]
    # Training full fine-tuning holds at least weights, gradients and SGD momentum (4 bytes each per value).
    assert float(by_config["full_ft", "sdpa"][column["train peak MiB"]]) >= 12 * EXPECTED_TRAINABLE["full_ft"] / 2**20
    assert float(by_config["full_ft", "sdpa"][column["train peak MiB"]]) > float(
        by_config["linear_probe", "sdpa"][column["train peak MiB"]])

    targets_headers, targets = parse_table(markdown, "target")
    assert targets_headers == ["target", "attention", "measured", "goal", "status"]
    assert len(targets) == 6 and {row[4] for row in targets} <= {"met", "missed"}
    _, mixed = parse_table(markdown, "batch")
    assert [(row[0], row[1]) for row in mixed] == [("single", "eager"), ("mixed", "eager"), ("single", "sdpa"), ("mixed", "sdpa")]
    assert "- command: `python -m benchmarks.bench_step --quick" in markdown


@pytest.mark.slow
def test_bench_memory_quick_shows_checkpointing_cases(tmp_path):
    markdown = run_quick("bench_memory", tmp_path)
    headers, rows = parse_table(markdown, "config")
    assert headers == ["config", "checkpointing", "prototype", "step s", "peak MiB", "peak x full FT"]
    assert [(row[0], row[1]) for row in rows] == [("full_ft", "off"), ("full_ft", "on"), ("ideal", "off"),
                                                   ("gated_temp", "off"), ("gated_temp", "on"), ("gated_temp", "on")]
    assert rows[0][5] == "1.000x"
    assert all(float(row[4]) > 0 for row in rows)


@pytest.mark.slow
def test_bench_compile_quick_compares_compiled_with_eager(tmp_path):
    markdown = run_quick("bench_compile", tmp_path)
    headers, rows = parse_table(markdown, "step")
    assert headers == ["step", "eager ms", "compiled ms", "compiled x eager", "first compiled call s"]
    assert [row[0] for row in rows] == ["train", "inference"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
