"""Do the tests fail when the maths is wrong? Break gated_vpt in plausible ways, one at a time, and see.

Each mutant replaces one exact piece of the library's source (it must occur exactly once) in a scratch copy of the
working tree; the tests that should notice (the maths tests for the method, the training tests for the recipe)
then run against that copy, stopping at the first failure. A mutant that no
test notices is a hole in the suite. Prints a Markdown table: the mutant, whether a test caught it, and which.

    python tests/mutants.py                   # every mutant (about 14 minutes on 2 cores)
    python tests/mutants.py gate temperature  # the mutants whose name contains one of these words

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
    "tests/test_backbones.py", "tests/test_gradients.py", "tests/test_core.py", "tests/test_fast_path.py", "tests/test_attention.py",
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
    ("saved adapters: NaN accepted", "layout.py", "if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):",
     "if False:"),
    ("saved adapters: extra tensors accepted", "layout.py", "unexpected = sorted(set(tensors) - set(expected))", "unexpected = []"),
    ("config: gate_init without upper bound", "settings.py", "not 0 < self.gate_init <= 50", "not 0 < self.gate_init"),
]
# The training recipe (METHOD.md): TRAINING_TESTS look for these
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
GROUPS = {"maths": (MATHS, MATHS_TESTS), "training": (TRAINING, TRAINING_TESTS)}


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
    chosen = [(m, tests) for mutants, tests in GROUPS.values() for m in mutants if not words or any(w in m[0] for w in words)]
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
