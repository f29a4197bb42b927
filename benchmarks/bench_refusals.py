"""How much work a hostile adapter costs before it is refused: wall time and peak extra memory of each refusal.

Each case is a small adapter folder whose files claim something large (10**9 blocks, a 20 MB config, a config
nested 100,000 deep, a classifier of 10**6 classes held in an empty tensor, segmentation heads of 6000 or 10**7
channels) or carry a backbone tensor; each is loaded by every loader that takes it, onto a tiny random ViT
(hidden size 32, 4 blocks). Peak memory is the process's resident high-water mark (Linux ``VmHWM``, reset before
each refusal through ``/proc/self/clear_refs``) above what it held before: Linux only.

    python -m benchmarks.bench_refusals --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel

import gated_vpt
from gated_vpt.cli import main as cli_main
from gated_vpt.segmentation import SegmentationHeadConfig, SegmentationModel, get_segmentation_peft_model, save_segmentation_adapter
from gated_vpt.segmentation.model import load_segmentation_adapter

from .report import emit, environment, table

TINY = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)


def _classifier() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**TINY, num_labels=3)).eval()


def _backbone() -> ViTModel:
    torch.manual_seed(0)
    return ViTModel(ViTConfig(**TINY), add_pooling_layer=False).eval()


def _write(source: Path, target: Path, config_text: Optional[str] = None, change=None) -> Path:
    """A copy of the adapter in ``source``, with its config text replaced or ``change(config, tensors)`` applied."""
    config = json.loads((source / "adapter_config.json").read_text())
    tensors = load_file(source / "adapter_model.safetensors")
    if change is not None:
        change(config, tensors)
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_text(config_text if config_text is not None else json.dumps(config))
    save_file(tensors, target / "adapter_model.safetensors")
    for extra in source.glob("*.json"):
        if extra.name != "adapter_config.json":
            (target / extra.name).write_text(extra.read_text())
    return target


def _cases(root: Path) -> dict[str, tuple[Path, str]]:
    """case -> (folder, kind): kind 'classification' or 'segmentation' decides the loaders."""
    classification = root / "classification"
    get_peft_model(_classifier(), gated_vpt.GatedPromptConfig(num_prompt_tokens=4)).save_pretrained(classification)
    segmentation = root / "segmentation"
    model = SegmentationModel(_backbone(), SegmentationHeadConfig(num_labels=4, aux_blocks=(1,), channels=8))
    save_segmentation_adapter(get_segmentation_peft_model(model, gated_vpt.GatedPromptConfig(num_prompt_tokens=4)), segmentation)

    def record(**claims):
        return lambda config, tensors: config["backbone"].update(claims)

    def tensor(key, value):
        return lambda config, tensors: tensors.__setitem__(key, value)

    def head_channels(config, tensors):
        tensors["base_model.model.decode_head.classifier.weight"] = torch.zeros(4, 6000, 1, 1)

    cases = {
        "backbone record: 10**9 blocks": (_write(classification, root / "blocks", change=record(num_hidden_layers=10**9)), "classification"),
        "backbone record: width 10**9": (_write(classification, root / "width", change=record(hidden_size=10**9)), "classification"),
        "config of 20 MB": (_write(classification, root / "big", '{"peft_type": "GATED_VPT", "x": "' + "x" * 20 * 2**20 + '"}'), "classification"),
        "config nested 100,000 deep": (_write(classification, root / "deep", "[" * 100_000 + "]" * 100_000), "classification"),
        "empty classifier of 10**6 classes": (
            _write(classification, root / "empty", change=tensor("base_model.model.classifier.weight", torch.zeros(10**6, 0))), "classification"
        ),
        "extra cls_token": (
            _write(classification, root / "cls", change=tensor("base_model.model.vit.embeddings.cls_token", torch.zeros(1, 1, 32))), "classification"
        ),
        "float64 prompt of 1e300": (
            _write(classification, root / "f64", change=tensor("base_model.model.vit.encoder.layer.0.gvpt_prompt", torch.full((4, 32), 1e300, dtype=torch.float64))),
            "classification",
        ),
        "head tensor claiming 6000 channels": (_write(segmentation, root / "channels", change=head_channels), "segmentation"),
    }
    settings = json.loads((segmentation / "segmentation_head.json").read_text())
    hostile = _write(segmentation, root / "settings")
    (hostile / "segmentation_head.json").write_text(json.dumps({**settings, "channels": 10**7}))
    cases["head settings of 10**7 channels"] = (hostile, "segmentation")
    return cases


def _cli_info(model: object, folder: Path) -> None:
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        status = cli_main(["info", str(folder)])
    if status == 1:  # the command's refusal: one line on stderr
        raise ValueError(err.getvalue())


# kind -> (the model a loader gets, built before the clock starts; loader -> load(model, folder))
LOADERS: dict[str, tuple[Callable[[], object], dict[str, Callable[[object, Path], object]]]] = {
    "classification": (_classifier, {
        "gated_vpt.load_adapter": gated_vpt.load_adapter,
        "PeftModel.from_pretrained": PeftModel.from_pretrained,
        "transformers model.load_adapter": lambda model, folder: model.load_adapter(str(folder)),
        "gated-vpt info": _cli_info,
    }),
    "segmentation": (_backbone, {"load_segmentation_adapter": load_segmentation_adapter}),
}


def _memory(field: str) -> int:
    """A field of /proc/self/status in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(load: Callable[[object, Path], object], model: object, folder: Path) -> tuple[float, int, str]:
    """Seconds, peak resident bytes above the start, and the refusal's type."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _memory("VmRSS")
    started = time.perf_counter()
    try:
        load(model, folder)
        refusal = "not refused"
    except (ValueError, FileNotFoundError) as error:
        refusal = type(error).__name__
    seconds = time.perf_counter() - started
    return seconds, _memory("VmHWM") - before, refusal


def run(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as root:
        cases = _cases(Path(root))
        rows = []
        for repetition in range(2):  # the first round warms every loader up; the second is reported
            for case, (folder, kind) in cases.items():
                build, loaders = LOADERS[kind]
                for loader, load in loaders.items():
                    seconds, peak, refusal = measure(load, build(), folder)
                    if repetition:
                        rows.append([case, loader, refusal, f"{seconds * 1000:.0f}", f"{peak / 2**20:.1f}"])
    slowest = max(rows, key=lambda row: float(row[3]))
    largest = max(rows, key=lambda row: float(row[4]))
    return "\n\n".join([
        "# Refusing hostile adapters",
        environment(torch.device("cpu")),
        table(["case", "loader", "refused with", "time (ms)", "peak extra memory (MiB)"], rows),
        f"Slowest refusal: {slowest[0]} through {slowest[1]}, {slowest[3]} ms. Largest peak: {largest[0]} through "
        f"{largest[1]}, {largest[4]} MiB above the process's resident size before it. The model is built before "
        "the clock starts.",
    ]) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--out", default=None, help="Also write the markdown report to this file.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
