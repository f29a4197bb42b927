"""The benchmark scripts' --quick modes run end to end and report what they promise (never how fast)."""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import main  # noqa: E402
from benchmarks.report import parse_table  # noqa: E402
from benchmarks.setups import CONFIGS, GATED, PLAIN, SIZES, build, logits_of  # noqa: E402
from benchmarks.steps import random_batch  # noqa: E402

TINY = SIZES["tiny"]
PATCHES = (TINY["image_size"] // TINY["patch_size"]) ** 2
D, L, P, CLASSES = TINY["hidden_size"], TINY["num_hidden_layers"], 10, 100
HEAD = D * CLASSES + CLASSES


def run_quick(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> str:
    """``python -m benchmarks.<module> --quick ...``, run in this process (a new one would spend seconds importing
    torch and peft again)."""
    out = tmp_path / f"{module}.md"
    argv = ["--quick", "--device", "cpu", "--out", str(out), *extra]
    benchmark = importlib.import_module(f"benchmarks.{module}")
    # As `python -m` sets them (the report quotes the command).
    monkeypatch.setattr(sys, "argv", [benchmark.__file__, *argv])
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=benchmark.__spec__))
    with contextlib.redirect_stdout(io.StringIO()):
        main(benchmark.parse_args, benchmark.run, argv)
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
    "clip_gated_temp": P * D + (L - 1) + L + HEAD,
}


@pytest.mark.slow
def test_bench_step_quick_reports_every_configuration_and_attention(tmp_path, monkeypatch):
    markdown = run_quick("bench_step", tmp_path, monkeypatch)
    headers, rows = parse_table(markdown, "config")
    assert headers == ["config", "attention", "train ms", "train x ideal", "train x full FT", "train spread",
                       "infer ms", "infer x ideal", "infer x full FT", "infer spread", "train peak MiB",
                       "train peak x ideal", "infer peak MiB", "infer peak x ideal", "trainable params", "adapter bytes"]
    names = [n for c in CONFIGS for n in [c] + ([c + PLAIN] if c in GATED else [])]
    assert [(row[0], row[1]) for row in rows] == [(n, a) for n in names for a in ("eager", "sdpa")]
    column = {name: headers.index(name) for name in headers}
    by_config = {(row[0], row[1]): row for row in rows}
    for (config, attention), row in by_config.items():
        assert int(row[column["trainable params"]].replace(",", "")) == EXPECTED_TRAINABLE[config.removesuffix(PLAIN)], config
        assert float(row[column["train peak MiB"]]) > 0 and float(row[column["infer peak MiB"]]) > 0
        for kind in ("train", "infer"):
            assert float(row[column[f"{kind} ms"]]) > 0
            assert row[column[f"{kind} x ideal"]] == "1.000x" or config != "ideal"
            assert row[column[f"{kind} peak x ideal"]] == "1.000x" or config != "ideal"
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
    # The fast path keeps no more activations than the plain path (the tiny model's difference rounds away).
    peak = {key: float(row[column["train peak MiB"]]) for key, row in by_config.items()}
    for config in GATED:
        for attention in ("eager", "sdpa"):
            assert peak[config, attention] <= peak[config + PLAIN, attention]

    targets_headers, targets = parse_table(markdown, "target")
    assert targets_headers == ["target", "attention", "measured", "goal", "status"]
    assert [row[0] for row in targets[::2]] == ["gated_temp train / ideal", "gated_temp inference / ideal",
                                                "gated_temp train peak / ideal", "vpt_deep train / ideal",
                                                "vpt_deep inference / ideal",
                                                "mixed batch throughput / single-adapter (3 adapters)"]
    assert {row[4] for row in targets} <= {"met", "missed"}
    _, mixed = parse_table(markdown, "batch")
    assert [(row[0], row[1]) for row in mixed] == [("single", "eager"), ("mixed", "eager"), ("single", "sdpa"), ("mixed", "sdpa")]
    assert "- command: `python -m benchmarks.bench_step --quick" in markdown


@pytest.mark.slow
def test_bench_memory_quick_shows_checkpointing_cases(tmp_path, monkeypatch):
    markdown = run_quick("bench_memory", tmp_path, monkeypatch)
    headers, rows = parse_table(markdown, "config")
    assert headers == ["config", "checkpointing", "path", "step s", "peak MiB", "peak x full FT"]
    assert [tuple(row[:3]) for row in rows] == [("full_ft", "off", "-"), ("full_ft", "on", "-"), ("ideal", "off", "-"),
                                               ("gated_temp", "off", "fast"), ("gated_temp", "off", "plain"),
                                               ("gated_temp", "on", "fast"), ("gated_temp", "on", "plain")]
    assert rows[0][5] == "1.000x"
    peak = {tuple(row[:3]): float(row[5].rstrip("x")) for row in rows}
    # Checkpointing frees the blocks' activations, for full fine-tuning and under gated_vpt alike, on both paths.
    assert peak["full_ft", "on", "-"] < peak["full_ft", "off", "-"]
    for path in ("fast", "plain"):
        assert peak["gated_temp", "on", path] < peak["gated_temp", "off", path]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("ideal_name, shallow_name", [("ideal", "vpt_shallow"), ("timm_ideal", "timm_vpt_shallow")])
def test_ideal_computes_what_vpt_shallow_computes(attention, ideal_name, shallow_name, monkeypatch):
    """The hand-written ideal is the same model as gated_vpt's VPT-shallow: equal logits for equal prompts (on
    transformers' ViT, and on timm's VisionTransformer for the timm ideal)."""
    if ideal_name.startswith("timm"):
        pytest.importorskip("timm")
        from benchmarks import setups

        monkeypatch.setitem(setups.BUILDERS, shallow_name, setups.BUILDERS["vpt_shallow"])
        monkeypatch.setitem(setups.BACKBONE_BUILDERS, shallow_name, setups.build_timm_backbone)
    pixel_values, _ = random_batch("tiny", 3, torch.device("cpu"))
    ideal = build(ideal_name, "tiny", P, torch.device("cpu"))
    shallow = build(shallow_name, "tiny", P, torch.device("cpu"))
    prompt = next(p for n, p in shallow.model.named_parameters() if "gvpt_prompt" in n)
    with torch.no_grad():
        ideal.model.prompts.copy_(prompt)
    for setup in (ideal, shallow):
        setup.set_attention(attention)
        setup.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ideal.model(pixel_values)), logits_of(shallow.model(pixel_values)))


def test_bench_start_times_the_commands_and_each_one_succeeds(tmp_path):
    from benchmarks import bench_start

    out = tmp_path / "start.md"
    with contextlib.redirect_stdout(io.StringIO()):
        bench_start.main(["--quick", "--hub", "--out", str(out)])
    headers, rows = parse_table(out.read_text(), "command")
    assert headers == ["command", "wall s (median)", "wall s (min-max)", "CPU s (median)", "goal s", "met", "exit status"]
    assert [row[0] for row in rows] == ["`gated-vpt --help`", "`gated-vpt info --help`", "`gated-vpt info <tmp>/run`",
                                        "`gated-vpt info bench/tiny`"]  # the last through the local Hub server
    assert [row[4] for row in rows] == ["1", "1", "2", "2"] and [row[6] for row in rows] == ["0", "0", "0", "0"]
    assert all(float(row[1]) > 0 and row[5] == ("yes" if float(row[1]) < float(row[4]) else "no") for row in rows)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
def test_bench_refusals_sees_every_hostile_case_refused_by_every_loader(tmp_path):
    from benchmarks import bench_refusals

    out = tmp_path / "refusals.md"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        bench_refusals.main(["--out", str(out)])
    headers, rows = parse_table(out.read_text(), "case")
    assert headers == ["case", "loader", "refused with", "time (ms)", "peak extra memory (MiB)"]
    assert len(rows) == 7 * 4 + 2 and {row[2] for row in rows} == {"ValueError"}
    assert {row[1] for row in rows} == {"gated_vpt.load_adapter", "PeftModel.from_pretrained", "transformers model.load_adapter",
                                        "gated-vpt info", "load_segmentation_adapter"}
