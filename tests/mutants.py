"""Do the tests fail when the maths is wrong? Break gated_vpt in plausible ways, one at a time, and see.

Each mutant replaces one exact piece of the library's source (it must occur exactly once) in a scratch copy of the
working tree; the tests that should notice (the maths tests for the method, the training tests for the recipe)
then run against that copy, stopping at the first failure. A mutant that no
test notices is a hole in the suite. Prints a Markdown table: the mutant, whether a test caught it, and which.

    python tests/mutants.py                   # every mutant
    python tests/mutants.py gate temperature  # the mutants whose name contains one of these words
    python tests/mutants.py cache protocol    # whole groups: maths, training, cache, resume, protocol,
                                              # segmentation, convert, card

Not collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATHS_TESTS = [
    "tests/test_backbones.py", "tests/test_timm.py", "tests/test_gradients.py", "tests/test_core.py", "tests/test_fast_path.py", "tests/test_attention.py",
    "tests/test_mixed_batch.py", "tests/test_introspection.py", "tests/test_peft_contract.py", "tests/test_precision.py",
    "tests/test_segmentation.py", "tests/test_untrusted_adapters.py", "tests/test_loading.py", "tests/test_docstrings.py",
]
TRAINING_TESTS = [
    "tests/test_optim.py", "tests/test_data.py", "tests/test_training.py", "tests/test_segmentation_script.py",
    "tests/test_docstrings.py",
]

# (name, file under gated_vpt/, the source as it is, the mutant); MATHS_TESTS look for these
MATHS = [
    ("gate: sigmoid of minus the logit", "gate.py", "gate = torch.sigmoid(gate_logit)", "gate = torch.sigmoid(-gate_logit)"),
    ("gate: mix the other way round", "gate.py", "torch.lerp(prompts_in, rows, gate)", "torch.lerp(rows, prompts_in, gate)"),
    ("gate backward: output rows not scaled by g", "gate.py", "grad_output[:, start:end].mul_(gate)", "grad_output[:, start:end].mul_(1)"),
    ("gate backward: prompts-in gradient g instead of 1-g", "gate.py", "rows * (1 - gate) if", "rows * gate if"),
    ("gate backward: logit gradient without g(1-g)", "gate.py", ".sum_to_size(gate.shape) * gate * (1 - gate)", ".sum_to_size(gate.shape) * gate"),
    ("temperature multiplies the query", "gate.py", "torch.div(query, temperature, out=out)", "torch.mul(query, temperature, out=out)"),
    ("temperature backward: wrong sign", "gate.py", "grad_temperature = -(grad * out)", "grad_temperature = (grad * out)"),
    ("temperature backward: query gradient multiplied", "gate.py", "grad_query = grad / temperature", "grad_query = grad * temperature"),
    ("temperature clamp: upper bound 100", "gate.py", "TEMPERATURE_RANGE = (0.01, 10.0)", "TEMPERATURE_RANGE = (0.01, 100.0)"),
    ("selection ratio: no later-gate product", "gate.py", "return gates * later, torch.prod(keep)", "return gates, torch.prod(keep)"),
    ("prompt init: VPT bound with 3 instead of 6", "prompts.py", "math.sqrt(6.0 /", "math.sqrt(3.0 /"),
    ("prompts inserted before the special tokens", "prompts.py",
     "torch.cat((hidden_states[:, :num_special], prompts, hidden_states[:, num_special:]), dim=1)",
     "torch.cat((prompts, hidden_states), dim=1)"),
    ("prompt rows read one row late", "prompts.py", "hidden_states[:, num_special : num_special + num_prompts]",
     "hidden_states[:, num_special + 1 : num_special + num_prompts + 1]"),
    ("MAE head: CLS in the mean", "heads.py", "mean = hidden_states[:, num_special:].mean", "mean = hidden_states.mean"),
    ("classifier init: fan_in", "heads.py", 'mode="fan_out"', 'mode="fan_in"'),
    ("classifier init: bias +log", "heads.py", "fill_(-math.log((1 - prior) / prior))", "fill_(math.log((1 - prior) / prior))"),
    ("gate logit starts at +gate_init", "layer.py", "torch.tensor(-float(config.gate_init))", "torch.tensor(float(config.gate_init))"),
    ("temperature starts at 2", "layer.py", "self.gvpt_temperature[adapter_name] = nn.Parameter(torch.tensor(1.0))",
     "self.gvpt_temperature[adapter_name] = nn.Parameter(torch.tensor(2.0))"),
    ("prompt dropout also in eval mode", "layer.py", "F.dropout(prompts, self.gvpt_config[name].prompt_dropout, self.training)",
     "F.dropout(prompts, self.gvpt_config[name].prompt_dropout, True)"),
    ("prompts start one block late", "layer.py", "self.index < config.prompt_start_block:", "self.index <= config.prompt_start_block:"),
    ("deep prompts carried like shallow ones", "layer.py", 'carries = config.prompt_mode == "shallow" and not self.is_last',
     "carries = not self.is_last"),
    ("mixed batch: adapters without gates get gate 0.5", "layer.py", 'self._per_adapter(self.gvpt_gate, name, float("inf"))',
     "self._per_adapter(self.gvpt_gate, name, 0.0)"),
    ("mixed batch: dropout without 1/(1-p)", "layer.py", "(torch.rand_like(prompts) >= rates) / (1 - rates)", "(torch.rand_like(prompts) >= rates)"),
    ("saved temperatures not clamped", "layer.py", "state_dict[key] = state_dict[key].clamp(*TEMPERATURE_RANGE)", "state_dict[key] = state_dict[key]"),
    ("fast path: prompts as keys without the first norm", "fast_path.py",
     "insert_prompts(normed, parts.norm_before(prompts), num_special)", "insert_prompts(normed, prompts, num_special)"),
    ("fast path: second layer scale dropped", "fast_path.py", "mlp = parts.layer_scales[1](mlp)", "mlp = mlp"),
    ("fast path: attention output without the first layer scale", "fast_path.py",
     "attended = parts.layer_scales[0](attended)", "attended = attended"),
    ("fast path: RoPE on the queries only", "fast_path.py",
     "_rotate_patch_rows(query, *rotary), _rotate_patch_rows(key, *rotary)", "_rotate_patch_rows(query, *rotary), key"),
    ("fast path: RoPE on the first rows", "fast_path.py",
     "prefix, patches = rows[..., :-count, :], rows[..., -count:, :]", "patches, prefix = rows[..., :count, :], rows[..., count:, :]"),
    ("prompt key/value cache ignores in-place updates", "layer.py", "and version == t._version", "and True"),
    ("stored temperatures never clamped", "model.py",
     "clamp_temperatures_(t for block in blocks for t in block.gvpt_temperature.values())", "pass"),
    ("MAE patch order shuffled", "model.py",
     "noise = torch.arange(num_patches, device=pixel_values.device, dtype=torch.float32)",
     "noise = torch.rand(num_patches, device=pixel_values.device, dtype=torch.float32)"),
    ("report: temperature not clamped", "introspection.py", "temperatures[index].float().clamp(*TEMPERATURE_RANGE).item()",
     "temperatures[index].float().item()"),
    ("saved adapters: NaN accepted", "layout.py", "if tensor.is_floating_point() and not bool(torch.isfinite(tensor.to(spec.dtype)).all()):",
     "if False:"),
    ("saved adapters: extra tensors accepted", "layout.py", "unexpected = sorted(set(tensors) - set(expected))", "unexpected = []"),
    ("config: gate_init without upper bound", "settings.py", "not 0 < self.gate_init <= 50", "not 0 < self.gate_init"),
    ("timm: prompts before the register tokens", "backbones.py", "special_tokens=lambda model: model.num_prefix_tokens",
     "special_tokens=lambda model: int(model.has_class_token)"),
    ("timm: average pooling read as a CLS head", "backbones.py", '"avg": ("mean", "mean")', '"avg": ("cls", "mean")'),
    ("timm: temperature on the fused qkv output", "backbones.py",
     "self.head_norms[0] if self.head_norms else self.projections[0]", "self.projections[0]"),
    ("fast path: fused qkv split as keys, queries, values", "fast_path.py",
     "query, key, value = Projection.split(projections[0], 3)", "key, query, value = Projection.split(projections[0], 3)"),
    ("fast path: query norm skipped", "fast_path.py", "query = parts.head_norms[0].forward(query)", "query = query"),
    ("fast path: key norm skipped", "fast_path.py", "key = parts.head_norms[1](key)", "key = key"),
    ("fast path: timm's own product unscaled", "fast_path.py", "((query * scaling) @ key", "((query * 1.0) @ key"),
]
# The training recipe (docs/HOW_IT_WORKS.md): TRAINING_TESTS look for these
TRAINING = [
    ("warmup: first epoch above 0", "training/optim.py", "            return t / self.warmup\n        progress = (t - self.warmup) / max(1, self.total",
     "            return (t + 1) / self.warmup\n        progress = (t - self.warmup) / max(1, self.total"),
    ("cosine: a quarter period", "training/optim.py", "0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))",
     "math.cos(0.5 * math.pi * min(1.0, progress))"),
    ("poly decay: exponent ignored", "training/optim.py", "return (1.0 - progress) ** self.power", "return 1.0 - progress"),
    ("learning-rate floor ignored", "training/optim.py", "return floor + (1.0 - floor) * factor(t)", "return factor(t)"),
    ("gate group gets weight decay", "training/optim.py", '"lr": gate_learning_rate, "weight_decay": 0.0,',
     '"lr": gate_learning_rate, "weight_decay": weight_decay,'),
    ("last partial batch dropped", "training/classification.py", "sampler=sampler, drop_last=False", "sampler=sampler, drop_last=True"),
    ("epoch loss: mean over batches", "training/loop.py", "state.epoch_loss_count += int(count)", "state.epoch_loss_count += 1"),
    ("non-finite loss trained on", "training/loop.py", "if not math.isfinite(loss_sum):", "if False:"),
    ("FGVC: shorter side to the crop size", "training/data.py", "int(math.floor(self.image_size * 256 / 224 + 0.5))", "self.image_size"),
    ("ImageNet mean of another channel order", "training/data.py", "IMAGENET_MEAN = (0.485, 0.456, 0.406)", "IMAGENET_MEAN = (0.406, 0.456, 0.485)"),
]
# Away from the maths: each group's own test file runs first, so the table names the test written for the break.
CACHE = [
    ("kv cache: precision not compared", "layer.py", "return stamp[0] == precision and len(entries)", "return len(entries)"),
    ("kv cache: autocast not part of the precision", "layer.py",
     "autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None", "autocast = None"),
    ("kv cache: the first norm not a source", "fast_path.py", "modules = (self.norm_before, self.key.module, self.value.module)",
     "modules = (self.key.module, self.value.module)"),
    ("kv cache: the key projection not a source", "fast_path.py",
     "modules = (self.norm_before, self.key.module, self.value.module)", "modules = (self.norm_before, self.value.module)"),
    ("kv cache: the value projection not a source", "fast_path.py",
     "modules = (self.norm_before, self.key.module, self.value.module)", "modules = (self.norm_before, self.key.module)"),
    ("kv cache: the prompt not a source", "layer.py", "sources = (prompt, *parts.key_value_parameters())",
     "sources = parts.key_value_parameters()"),
    ("kv cache: storage not compared", "layer.py", "ref() is t and pointer == t.data_ptr() and version", "ref() is t and version"),
    ("kv cache: used with autograd on", "layer.py", "not self.training and not torch.is_grad_enabled():", "not self.training:"),
    ("kv cache: kept across train()/eval()", "layer.py", "self._prompt_kv_cache.clear()\n        self.base_layer.eval()",
     "self.base_layer.eval()"),
]
RESUME = [
    ("resume: another epoch count accepted", "training/args.py", '"dry_run", "stop_signals",\n)',
     '"dry_run", "stop_signals", "num_train_epochs",\n)'),
    ("resume: another accumulation accepted", "training/args.py", '"dry_run", "stop_signals",\n)',
     '"dry_run", "stop_signals", "gradient_accumulation_steps",\n)'),
    ("resume: process count not recorded", "training/args.py", '    config["num_processes"] = num_processes\n', ""),
    ("updates per epoch: the short last accumulation dropped", "training/loop.py",
     "return math.ceil(num_batches / gradient_accumulation_steps)", "return num_batches // gradient_accumulation_steps"),
    ("schedule stepped on every micro-batch", "training/loop.py",
     "                if not accelerator.sync_gradients:\n                    continue\n", ""),
]
PROTOCOL = [
    ("protocol: a rate chosen from a partial grid", "training/protocol.py", "if not scores or not all(run.settled for run in runs):",
     "if not scores:"),
    ("protocol: ties go to the larger rate", "training/protocol.py", "key=lambda pair: (pair[0], -pair[1])",
     "key=lambda pair: (pair[0], pair[1])"),
    ("protocol: tune runs ignore the tune seed", "training/protocol.py", 'self.run(task, "tune", lr, self.tune_seed)',
     'self.run(task, "tune", lr, 0)'),
    ("protocol: --tune_seed not passed on", "training/protocol.py", "args.learning_rates, args.seeds, args.tune_seed,",
     "args.learning_rates, args.seeds, 0,"),
    ("protocol: a subset shows the benchmark's paper means", "training/protocol.py",
     "        if args.tasks:\n            groups, overall = {}, None\n", ""),
    ("protocol: FGVC paper numbers by position in the subset", "training/protocol.py", 'BENCHMARKS["fgvc"].index(definition)',
     "definitions.index(definition)"),
    ("report: overall mean of the group means", "training/protocol_report.py",
     "        means = [r.mean for r in members if r.mean is not None]\n",
     '        means = [s.mean for s in rows if s.mean is not None] if name == "Overall" and rows else '
     "[r.mean for r in members if r.mean is not None]\n"),
    ("FGVC tune validates on test", "training/benchmark_data.py", '"tune": {"train": "train", "validation": "val"},',
     '"tune": {"train": "train", "validation": "test"},'),
    ("VTAB-1k tune trains on train800val200", "training/benchmark_data.py",
     '"tune": {"train": "train800", "validation": "val200"},', '"tune": {"train": "train800val200", "validation": "val200"},'),
]
SEGMENTATION = [
    ("mIoU: classes predicted but never labelled left out", "segmentation/metrics/mean_iou.py", "iou = torch.where(union > 0,",
     "iou = torch.where(labelled > 0,"),
    ("padded label pixels are class 0", "segmentation/data.py",
     "labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.labels.ignore_index)", "labels = F.pad(labels, (0, pad_w, 0, pad_h), value=0)"),
    ("masks rescaled bilinearly", "segmentation/data.py", 'F.interpolate(mask[None, None].float(), size=size, mode="nearest")',
     'F.interpolate(mask[None, None].float(), size=size, mode="bilinear")'),
    ("sliding windows a crop apart", "segmentation/inference.py", "min(i * stride, length - crop)", "min(i * crop, length - crop)"),
    ("crop rule counts ignored pixels as a class", "segmentation/data.py",
     "counts = torch.bincount(window[window != self.labels.ignore_index].flatten())", "counts = torch.bincount(window.flatten())"),
    ("rescale box square", "segmentation/data.py", "self.box = (4 * crop_size, crop_size)", "self.box = (crop_size, crop_size)"),
    ("test scales rounded down", "segmentation/inference.py",
     "size = (max(1, int(image.shape[-2] * scale + 0.5)), max(1, int(image.shape[-1] * scale + 0.5)))",
     "size = (max(1, int(image.shape[-2] * scale)), max(1, int(image.shape[-1] * scale)))"),
    ("flipped view not flipped back", "segmentation/inference.py", "            if flipped:\n                logits = logits.flip(-1)\n", ""),
]
CONVERT = [
    ("MoCo v3 ViT-S converted with 6 heads", "convert.py", '"mocov3": {384: 12,', '"mocov3": {384: 6,'),
    ("MAE ViT-L converted with 12 heads", "convert.py", '"mae": {768: 12, 1024: 16,', '"mae": {768: 12, 1024: 12,'),
    ("converted norms with eps 1e-12", "convert.py", "LAYER_NORM_EPS = 1e-6", "LAYER_NORM_EPS = 1e-12"),
    ("converted with tanh GELU", "convert.py", 'hidden_act="gelu",', 'hidden_act="gelu_new",'),
    ("preprocessor: the mean as std", "convert.py", '"image_std": list(IMAGENET_STD),', '"image_std": list(IMAGENET_MEAN),'),
    ("preprocessor: no rescale to [0, 1]", "convert.py", '"rescale_factor": 1 / 255,', '"rescale_factor": 1.0,'),
]
CARD = [
    ("card: no CC-BY-NC notice for converted MAE folders", "card.py",
     'return json.loads(record.read_text()).get("model_type") == "mae"', "return False"),
    ("card: no CC-BY-NC notice for facebook/vit-mae-*", "card.py",
     "    if base_model.startswith(NON_COMMERCIAL_BASES):\n        return True\n", ""),
    ("card: losses listed as metrics", "card.py", '_NOT_METRICS = ("loss", "runtime", "per_second", "epoch", "step")',
     '_NOT_METRICS = ("runtime", "per_second", "epoch", "step")'),
    ("card: metric ids keep their split", "card.py", 'return re.sub(r"^(eval|test|val|validation)_", "", name)', "return name"),
    ("cli: a folder's adapter/ read before the folder's own adapter", "loading.py",
     "if not (path / CONFIG_NAME).is_file() and (inner / CONFIG_NAME).is_file():", "if (inner / CONFIG_NAME).is_file():"),
]
GROUPS = {
    "maths": (MATHS, MATHS_TESTS),
    "training": (TRAINING, TRAINING_TESTS),
    "cache": (CACHE, ["tests/test_key_value_cache.py", "tests/test_fast_path.py"]),
    "resume": (RESUME, ["tests/test_resume_and_schedule.py", "tests/test_training.py"]),
    "protocol": (PROTOCOL, ["tests/test_protocol_plan.py", "tests/test_protocol.py", "tests/test_benchmark_data.py"]),
    "segmentation": (SEGMENTATION, ["tests/test_segmentation_protocol.py", "tests/test_segmentation.py"]),
    "convert": (CONVERT, ["tests/test_convert_sizes.py", "tests/test_convert.py"]),
    "card": (CARD, ["tests/test_card_and_cli.py", "tests/test_hub.py", "tests/test_cli.py"]),
}


def run(mutant: tuple[str, str, str, str], tests: list[str], copy: Path) -> tuple[bool, str, float]:
    name, file, old, new = mutant
    path = copy / "gated_vpt" / file
    source = path.read_text()
    if source.count(old) != 1:
        raise SystemExit(f"{name}: the source piece occurs {source.count(old)} times in gated_vpt/{file}; update the mutant.")
    path.write_text(source.replace(old, new))
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    try:
        process = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                 cwd=copy, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        path.write_text(source)
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", process.stdout, re.MULTILINE)
    return process.returncode != 0, failed.group(1) if failed else "", time.perf_counter() - started


def main(words: list[str]) -> int:
    groups, names = [w for w in words if w in GROUPS], [w for w in words if w not in GROUPS]
    chosen = [(m, tests) for group, (mutants, tests) in GROUPS.items() for m in mutants
              if not words or group in groups or any(w in m[0] for w in names)]
    with tempfile.TemporaryDirectory() as temporary:
        copy = Path(temporary) / "gated-vpt"
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        for file in files:
            if (ROOT / file).is_file():
                (copy / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / file, copy / file)
        print("| mutant | caught | first failing test | s |\n|---|---|---|---:|")
        survivors = 0
        for mutant, tests in chosen:
            caught, test, seconds = run(mutant, tests, copy)
            survivors += not caught
            print(f"| {mutant[0]} (`{mutant[1]}`) | {'yes' if caught else '**no**'} | {test or '-'} | {seconds:.0f} |", flush=True)
    print(f"\n{len(chosen) - survivors} of {len(chosen)} mutants caught.")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
