"""Sharing adapters: the model card, and real round trips through huggingface_hub and peft against the local Hub
server in ``hub_server.py``.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every Hub scenario runs in
a subprocess started with its own environment (``_run_steps``); one subprocess runs several steps to keep the
imports (~5 s each) few. The models and adapters are built here, in the test process, and saved to disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessor

import gated_vpt
from conftest import make_backbone, modules_loaded_by_command, pixels_as_training_evaluates, randomize_adapter_
from gated_vpt.card import CITATION, write_model_card
from hub_server import running_hub

ROOT = Path(__file__).resolve().parents[1]
REPO = "test-org/vit-gated"
FAKE_TOKEN = "hf_FAKEtoken1234567890unmistakable"

# Runs JSON-described steps in one process: {"argv": [...]} calls gated_vpt.cli.main, {"code": "..."} runs Python
# that may set `result`; "env" sets environment variables first (those huggingface_hub reads at call time, such as
# HF_TOKEN). Prints one JSON line per step with the exit status, output and result.
DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, traceback
    from gated_vpt import cli
    for step in json.loads(sys.argv[1]):
        os.environ.update(step.get("env", {}))
        out, err, status, result = io.StringIO(), io.StringIO(), 0, None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if "argv" in step:
                    status = cli.main(step["argv"])
                else:
                    scope = {}
                    exec(step["code"], scope)
                    result = scope.get("result")
            except BaseException:
                status, result = "raised", traceback.format_exc()
        print(json.dumps({"status": status, "out": out.getvalue(), "err": err.getvalue(), "result": result}))
    """
)


def _env(hub_url: str, home: Path, token: str | None = "hf_dummy_test_token", offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home), HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    if token:
        env["HF_TOKEN"] = token
    return env


def _run_steps(steps: list[dict], env: dict, setup: str = "") -> list[dict]:
    process = subprocess.run([sys.executable, "-c", setup + DRIVER, json.dumps(steps)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=240)
    assert process.returncode == 0, process.stderr[-3000:]
    results = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(steps), process.stdout[-3000:] + process.stderr[-3000:]
    return results


def _assert_clean_error(result: dict, *phrases: str) -> None:
    """A CLI error: exit status 1, one `gated-vpt: error:` line naming the problem, no traceback."""
    assert result["status"] == 1, result
    assert result["err"].startswith("gated-vpt: error:") and "Traceback" not in result["err"], result["err"]
    for phrase in phrases:
        assert phrase in result["err"], result["err"]


@pytest.fixture(scope="module")
def hub():
    with running_hub() as server:
        yield server


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny base model (with its image processor) and two versions of an adapter for it, with cards."""
    root = tmp_path_factory.mktemp("hub")
    base_dir = root / "base"
    make_backbone("vit_clf").save_pretrained(base_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(base_dir)
    versions = []
    for seed in (1, 2):
        model = get_peft_model(ViTForImageClassification.from_pretrained(base_dir), gated_vpt.GatedPromptConfig(num_prompt_tokens=3))
        randomize_adapter_(model, seed=seed)
        model.eval().save_pretrained(root / f"v{seed}")
        write_model_card(root / f"v{seed}", model, metrics={"accuracy": 0.25 * seed}, dataset="tiny-set")
        versions.append(root / f"v{seed}")
    image_dir = root / "images"
    image_dir.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        pixels = torch.randint(0, 256, (20, 24, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(image_dir / f"img{i}.png")
    return {"root": root, "base": base_dir, "v1": versions[0], "v2": versions[1], "images": image_dir}


# --- the model card -------------------------------------------------------------------------------------------


def test_card_after_save_pretrained_is_one_complete_card(saved, tmp_path):
    model = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(saved["base"]), saved["v1"])
    model.save_pretrained(tmp_path)  # peft writes its template README.md here first
    image = tmp_path.parent / "gates.png"
    Image.new("RGB", (4, 4)).save(image)
    path = write_model_card(tmp_path, model, metrics={"eval_accuracy": 0.8125, "eval_loss": 0.4}, gates_image=image,
                            base_model="google/vit-base-patch16-224-in21k", dataset="cub_200_2011")
    text = path.read_text()
    assert text.count("\n---\n") == 1 and text.startswith("---\n")  # one front matter
    assert "More Information Needed" not in text and text.count("### Framework versions") == 1
    data = ModelCard.load(path).data
    assert data.library_name == "peft" and data.base_model == "google/vit-base-patch16-224-in21k"
    assert {"gated-vpt", "visual-prompt-tuning", "peft", "image-classification"} <= set(data.tags)
    assert "base_model:adapter:google/vit-base-patch16-224-in21k" in data.tags
    assert data.license == "apache-2.0" and data.datasets == ["cub_200_2011"] and data.metrics == ["accuracy"]
    assert data.eval_results[0].metric_type == "accuracy" and data.eval_results[0].metric_value == 0.8125
    assert "arxiv.org/abs/2306.05067" in text and CITATION in text
    assert (tmp_path / "gates.png").is_file() and "](gates.png)" in text
    assert gated_vpt.gate_report(model).format_table() in text
    assert "| Prompt tokens | 3 |" in text and "| eval_accuracy | 0.8125 |" in text


def test_card_usage_snippet_runs_when_copied(saved, monkeypatch):
    text = (saved["v1"] / "README.md").read_text()
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    monkeypatch.chdir(saved["root"])  # the card names the local base and adapter folders, not their absolute paths
    exec(snippet, scope)
    expected = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(saved["base"]), saved["v1"]).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(scope["model"](x).logits, expected(x).logits)


def test_resaving_after_the_card_keeps_it(saved, tmp_path):
    model = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(saved["base"]), saved["v1"])
    model.save_pretrained(tmp_path)
    write_model_card(tmp_path, model)
    model.save_pretrained(tmp_path)  # e.g. a trainer saving the adapter again
    text = (tmp_path / "README.md").read_text()
    assert text.count("### Framework versions") == 1 and text.count("- PEFT ") == 1
    assert "# Gated visual prompt tuning adapter" in text
    assert {"gated-vpt", "visual-prompt-tuning"} <= set(ModelCard.load(tmp_path / "README.md").data.tags)


def test_card_for_a_local_base_keeps_local_paths_out(saved):
    data = ModelCard.load(saved["v1"] / "README.md").data
    assert data.base_model is None and not any(str(saved["base"]) in tag for tag in data.tags)
    text = (saved["v1"] / "README.md").read_text()
    assert str(saved["root"]) not in text and data.model_name == "v1"
    assert 'load_base_model("base", num_labels=3)  # a local folder: the path to your copy' in text
    assert "# Gated visual prompt tuning adapter for `base` (a local model folder, not on the Hub)" in text


def test_card_needs_something_to_describe(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        write_model_card(tmp_path)


# --- round trips through the local Hub ------------------------------------------------------------------------

PYTHON_ROUND_TRIP = """
import torch, gated_vpt
from huggingface_hub import HfApi, ModelCard
from peft import PeftModel
from transformers import ViTForImageClassification
from gated_vpt.hub import push_adapter
BASE, V1, V2, REPO = {base!r}, {v1!r}, {v2!r}, {repo!r}
def base():
    return ViTForImageClassification.from_pretrained(BASE).eval()
x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
local1, local2 = (PeftModel.from_pretrained(base(), v).eval() for v in (V1, V2))
local1.push_to_hub(REPO)                                   # peft's (transformers') push, first version
sha1 = HfApi().repo_info(REPO).sha
card1 = ModelCard.load(REPO).content
sha2 = push_adapter(local2, REPO)                          # this package's push, second version
latest = PeftModel.from_pretrained(base(), REPO).eval()    # plain peft, by repo id
pinned = PeftModel.from_pretrained(base(), REPO, revision=sha1).eval()
loader = gated_vpt.load_adapter(base(), REPO, revision=sha1).eval()
many = PeftModel.from_pretrained(base(), REPO, revision=sha1, adapter_name="first").eval()
many.load_adapter(REPO, adapter_name="second")
push_adapter(many, "test-org/named", adapter_name="second")   # a named adapter becomes the repo's adapter
named = PeftModel.from_pretrained(base(), "test-org/named").eval()
with torch.no_grad():
    mixed = many(x, adapter_names=["first", "second", "second", "first"]).logits
    want1, want2 = local1(x).logits, local2(x).logits
    result = dict(
        sha1=sha1, sha2=sha2,
        latest=torch.equal(latest(x).logits, want2), pinned=torch.equal(pinned(x).logits, want1),
        loader=torch.equal(loader(x).logits, want1), versions_differ=not torch.equal(want1, want2),
        named=torch.equal(named(x).logits, want2),
        mixed=torch.equal(mixed[[0, 3]], want1[[0, 3]]) and torch.equal(mixed[[1, 2]], want2[[1, 2]]),
        card=ModelCard.load(REPO).content, card1=card1,
    )
"""

# The training script's --push_to_hub, on the embedded backbone and digits for one short epoch.
SCRIPT_PUSH = """
from conftest import load_example
script = load_example("train_image_classification")
script.main(["--num_train_epochs", "1", "--warmup_epochs", "0", "--checkpointing_steps", "none",
             "--output_dir", {output!r}, "--push_to_hub", "--hub_model_id", "test-org/from-script"])
"""


SEGMENTATION_ROUND_TRIP = """
import torch
from huggingface_hub import ModelCard
from transformers import ViTModel
from gated_vpt.hub import pull_adapter, push_adapter
from gated_vpt.segmentation import load_segmentation_adapter
ADAPTER, BASE, PULLED = {adapter!r}, {base!r}, {pulled!r}
def load(source):
    return load_segmentation_adapter(ViTModel.from_pretrained(BASE), source).eval()
x = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(0))
push_adapter(ADAPTER, "test-org/seg")                                       # from a directory
model = load("test-org/seg")
push_adapter(model, "test-org/seg-from-model")                              # from the loaded model
pulled = load(pull_adapter("test-org/seg-from-model", local_dir=PULLED))
with torch.no_grad():
    want = load(ADAPTER)(x).logits
    result = dict(
        logits=[torch.equal(m(x).logits, want) for m in (model, pulled)],
        heads=[vars(m.get_base_model().head_config) for m in (model, pulled)],
        card=ModelCard.load("test-org/seg").content,
    )
"""


@pytest.fixture(scope="module")
def saved_segmentation(tmp_path_factory):
    """A segmentation adapter with named classes and ignore index 100 on a tiny ViT, with its card."""
    from gated_vpt.segmentation import SegmentationHeadConfig, SegmentationModel, get_segmentation_peft_model
    from gated_vpt.segmentation import save_segmentation_adapter

    root = tmp_path_factory.mktemp("segmentation")
    make_backbone("vit").save_pretrained(root / "base")
    heads = SegmentationHeadConfig(num_labels=3, aux_blocks=(1,), channels=8, ignore_index=100,
                                   id2label={0: "sky", 1: "road", 2: "tree"})
    torch.manual_seed(0)
    model = get_segmentation_peft_model(SegmentationModel(make_backbone("vit"), heads), gated_vpt.GatedPromptConfig())
    randomize_adapter_(model, seed=3)
    save_segmentation_adapter(model, root / "adapter")
    write_model_card(root / "adapter", model, metrics={"validation_miou": 0.5})
    return {"root": root, "heads": vars(heads)}


@pytest.fixture(scope="module")
def pushed(hub, saved, saved_segmentation, tmp_path_factory):
    """Two versions pushed from Python (transformers' push_to_hub, then push_adapter) and pulled back; a segmentation
    adapter pushed (from its directory, then from the model loaded from the Hub) and pulled back."""
    home = tmp_path_factory.mktemp("hf_home_python")
    code = PYTHON_ROUND_TRIP.format(base=str(saved["base"]), v1=str(saved["v1"]), v2=str(saved["v2"]), repo=REPO)
    root = saved_segmentation["root"]
    segmentation = SEGMENTATION_ROUND_TRIP.format(adapter=str(root / "adapter"), base=str(root / "base"),
                                                  pulled=str(root / "pulled"))
    script = SCRIPT_PUSH.format(output=str(tmp_path_factory.mktemp("script_run")))
    env = _env(hub.url, home)
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")
    steps = _run_steps([{"code": code}, {"code": segmentation}, {"code": script}], env)
    for step in steps:
        assert step["status"] == 0, step["result"]
    return {**steps[0]["result"], "segmentation": steps[1]["result"]}


def _assert_gated_vpt_card(text: str, repo: str) -> None:
    card = ModelCard(text)
    assert card.data.library_name == "peft" and "gated-vpt" in card.data.tags and "More Information Needed" not in text
    assert f'adapter_id = "{repo}"' in card.content and f"gated-vpt info {repo}" in card.content
    assert "/tmp/" not in text and str(ROOT) not in text and "pip install -e ." in text


def test_python_push_and_pull_by_repo_id_and_revision_are_bit_identical(hub, pushed):
    assert hub.commit_shas(REPO) == [pushed["sha1"], pushed["sha2"]]
    assert pushed["versions_differ"]
    assert pushed["latest"] and pushed["pinned"] and pushed["loader"] and pushed["named"]


def test_adapters_pulled_from_the_hub_share_one_base_in_a_mixed_batch(pushed):
    assert pushed["mixed"]


def test_push_adapter_uploads_the_gated_vpt_card_pointed_at_the_repo(hub, pushed):
    _assert_gated_vpt_card(pushed["card"], REPO)
    assert set(hub.files(REPO)) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}


def test_peft_push_to_hub_uploads_the_gated_vpt_card(pushed):
    _assert_gated_vpt_card(pushed["card1"], REPO)


def test_training_script_push_uploads_the_card_and_class_names(hub, pushed):
    files = hub.files("test-org/from-script")
    _assert_gated_vpt_card(files["README.md"].decode(), "test-org/from-script")
    assert "`assets/mae-tiny` (a local model folder, not on the Hub)" in files["README.md"].decode()
    assert "scikit-learn digits" in files["README.md"].decode() and "gates.png" in files
    assert json.loads(files["id2label.json"]) == {str(i): str(i) for i in range(10)}


def test_segmentation_adapter_keeps_its_head_settings_and_card_through_the_hub(hub, pushed, saved_segmentation):
    result = pushed["segmentation"]
    assert result["logits"] == [True, True]  # bit-identical to the local adapter, BatchNorm statistics included
    # Class names and ignore index survive (in JSON: lists for tuples, string keys).
    heads = {**saved_segmentation["heads"], "aux_blocks": [1], "id2label": {"0": "sky", "1": "road", "2": "tree"}}
    assert result["heads"] == [heads, heads]
    for repo in ("test-org/seg", "test-org/seg-from-model"):
        assert {"segmentation_head.json", "adapter_model.safetensors", "README.md"} <= set(hub.files(repo)), repo
    assert (saved_segmentation["root"] / "pulled" / "segmentation_head.json").is_file()
    card = ModelCard(result["card"])
    assert card.data.pipeline_tag == "image-segmentation" and "semantic-segmentation" in card.data.tags
    assert 'adapter_id = "test-org/seg"' in card.content and "load_segmentation_adapter(backbone, adapter_id)" in card.content


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_home_cli")


@pytest.fixture(scope="module")
def cli_online(hub, saved, pushed, cli_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("pulled")
    steps = [
        {"argv": ["pull", REPO, "-o", str(out / "latest")]},
        {"argv": ["pull", REPO, "--revision", pushed["sha1"], "-o", str(out / "first")]},
        {"argv": ["info", REPO, "--json"]},
        {"argv": ["predict", REPO, "--revision", pushed["sha1"], str(saved["images"]), "--top_k", "3", "--json",
                  "--base", str(saved["base"])]},  # the pushed config names the local base by its folder only
        {"argv": ["info", "test-org/no-such-adapter"]},
        {"argv": ["pull", REPO, "--revision", "no-such-branch"]},
        {"argv": ["predict", REPO, "--base", str(saved["root"] / "other_base"), str(saved["images"])]},
    ]
    steps += [
        {"argv": ["push", str(saved["v1"]), "test-org/not-mine"], "env": {"HF_TOKEN": "hf_readonly_token"}},
        {"argv": ["push", str(saved["v1"]), "test-org/pushed-by-cli"], "env": {"HF_TOKEN": FAKE_TOKEN}},
    ]
    make_backbone("vit_clf", hidden_size=48).save_pretrained(saved["root"] / "other_base")
    return out, _run_steps(steps, _env(hub.url, cli_home))


def test_cli_pull_latest_and_pinned_revision(saved, cli_online):
    out, (latest, first, *_) = cli_online
    assert latest["status"] == 0 and first["status"] == 0, (latest, first)
    for pulled, version in ((out / "latest", saved["v2"]), (out / "first", saved["v1"])):
        assert (pulled / "adapter_model.safetensors").read_bytes() == (version / "adapter_model.safetensors").read_bytes()
        config = json.loads((version / "adapter_config.json").read_text())
        assert json.loads((pulled / "adapter_config.json").read_text()) == {**config, "base_model_name_or_path": "base"}
    assert 'adapter_id = "test-org/vit-gated"' in (out / "latest" / "README.md").read_text()


def test_cli_info_of_a_hub_id(saved, cli_online):
    info = cli_online[1][2]
    assert info["status"] == 0, info
    summary = json.loads(info["out"])
    assert summary["gates"] == gated_vpt.gate_report(saved["v2"]).to_dict()
    assert summary["config"]["num_prompt_tokens"] == 3
    assert summary["files"]["adapter_model.safetensors"] == (saved["v2"] / "adapter_model.safetensors").stat().st_size
    assert summary["parameters"]["gvpt_prompt"] == 3 * 32


def test_cli_info_of_a_hub_id_needs_neither_peft_nor_transformers(cli_online, cli_home, hub, tmp_path):
    [loaded] = modules_loaded_by_command(tmp_path, ["info", REPO], env=_env(hub.url, cli_home))
    assert "huggingface_hub" in loaded and not {"peft", "transformers"} & loaded


def test_cli_predict_through_a_pinned_hub_adapter_matches_the_model(saved, cli_online):
    predict = cli_online[1][3]
    assert predict["status"] == 0, predict
    rows = [json.loads(line) for line in predict["out"].splitlines()]
    model = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(saved["base"]), saved["v1"]).eval()
    paths = sorted(saved["images"].iterdir())
    pixels = pixels_as_training_evaluates(paths, 16, mean=(0.5, 0.5, 0.5))
    with torch.no_grad():
        scores, indices = model(pixels).logits.softmax(-1).topk(3)
    assert [row["image"] for row in rows] == [str(p) for p in paths]
    for row, row_scores, row_indices in zip(rows, scores.tolist(), indices.tolist()):
        assert [t["index"] for t in row["top"]] == row_indices
        assert [t["score"] for t in row["top"]] == pytest.approx(row_scores, abs=1e-6)


def test_cli_errors_for_missing_repo_revision_another_base_and_a_refused_token(cli_online):
    _, (*_, no_repo, no_revision, other_base, refused, _) = cli_online
    _assert_clean_error(no_repo, "test-org/no-such-adapter")
    _assert_clean_error(no_revision, "no-such-branch")
    _assert_clean_error(other_base, "another backbone", "hidden_size")
    _assert_clean_error(refused, "refused the token", "HTTP 403", "write access")
    assert "hf_readonly_token" not in refused["err"] + refused["out"]


def test_offline_with_a_warm_cache_works(hub, saved, pushed, cli_online, cli_home):
    steps = [
        {"argv": ["info", REPO, "--revision", pushed["sha1"], "--json"]},
        {"argv": ["pull", REPO]},
        {"code": f"import gated_vpt\nfrom peft import PeftModel\nfrom transformers import ViTForImageClassification\n"
                 f"PeftModel.from_pretrained(ViTForImageClassification.from_pretrained({str(saved['base'])!r}), {REPO!r})\n"
                 "result = 'loaded'"},
    ]
    requests_before = len(hub.requests)
    info, pull, python = _run_steps(steps, _env(hub.url, cli_home, offline=True))
    assert info["status"] == 0 and json.loads(info["out"])["gates"] == gated_vpt.gate_report(saved["v1"]).to_dict()
    assert pull["status"] == 0 and Path(pull["out"].strip(), "adapter_model.safetensors").is_file(), pull
    assert python["result"] == "loaded", python
    assert len(hub.requests) == requests_before  # nothing reached the server


@pytest.fixture(scope="module")
def cold_offline(hub, pushed, tmp_path_factory):
    steps = [{"argv": ["pull", REPO]},
             {"code": f"import gated_vpt, torch\nfrom conftest import make_backbone\n"
                      f"try:\n    gated_vpt.load_adapter(make_backbone('vit_clf'), {REPO!r})\n"
                      "except Exception as error:\n    result = f'{type(error).__name__}: {error}'"}]
    env = _env(hub.url, tmp_path_factory.mktemp("cold_home"), offline=True)
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")
    return _run_steps(steps, env)


def test_offline_with_a_cold_cache_fails_clearly(cold_offline):
    _assert_clean_error(cold_offline[0], "HF_HUB_OFFLINE=1 is set", REPO, "not in the local cache")


def test_load_adapter_offline_with_a_cold_cache_says_so(cold_offline):
    message = cold_offline[1]["result"]
    assert message.startswith("FileNotFoundError") and "HF_HUB_OFFLINE" in message, message


def test_no_token_and_no_network_fail_clearly(saved, tmp_path):
    unreachable = "http://127.0.0.1:9"  # discard port: connection refused
    steps = [{"argv": ["push", str(saved["v1"]), "test-org/new"]}, {"argv": ["pull", REPO]}]
    # huggingface_hub retries a refused connection 5 times with 1-8 s pauses; skip the pauses, not the retries.
    push, pull = _run_steps(steps, _env(unreachable, tmp_path, token=None), setup="import time; time.sleep = lambda s: None\n")
    _assert_clean_error(push, "needs a Hugging Face token", "HF_TOKEN")
    _assert_clean_error(pull, "Could not reach the Hub at http://127.0.0.1:9", REPO)


def test_cli_push_uses_the_token_but_never_shows_or_stores_it(hub, saved, cli_online, cli_home):
    push = cli_online[1][-1]  # HF_TOKEN=FAKE_TOKEN
    assert push["status"] == 0, push
    sha = hub.commit_shas("test-org/pushed-by-cli")[-1]
    assert f"commit {sha}" in push["out"]
    writes = {auth for method, path, auth in hub.requests if method == "POST" and "pushed-by-cli" in path}
    assert writes == {f"Bearer {FAKE_TOKEN}"}
    files = hub.files("test-org/pushed-by-cli")
    assert files["adapter_model.safetensors"] == (saved["v1"] / "adapter_model.safetensors").read_bytes()
    assert b'adapter_id = "test-org/pushed-by-cli"' in files["README.md"]
    leaks = [name for name, data in files.items() if FAKE_TOKEN.encode() in data]
    leaks += [str(p) for folder in (saved["root"], cli_home) for p in folder.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert FAKE_TOKEN not in push["out"] + push["err"] and not leaks


# --- local paths are never Hub ids -----------------------------------------------------------------------------

def test_local_looking_paths_that_do_not_exist_say_so_without_asking_the_hub(hub, saved, saved_segmentation, tmp_path):
    run = tmp_path / "outputs" / "run"
    shutil.copytree(saved["v1"], run / "adapter")
    (tmp_path / "elsewhere").mkdir()
    load = ("import gated_vpt\nfrom conftest import make_backbone\ntry:\n"
            "    gated_vpt.load_adapter(make_backbone('vit_clf'), {path!r})\n"
            "except FileNotFoundError as error:\n    result = str(error)")
    steps = [
        {"code": f"import os\nos.chdir({str(tmp_path / 'elsewhere')!r})"},
        {"argv": ["info", "outputs/run"]},  # the run folder of a directory above
        {"argv": ["info", "../outputs/rnu"]},  # a typo
        {"argv": ["predict", "./run", str(saved["images"])]},
        {"argv": ["push", "../outputs/rnu", "test-org/typo"]},
        {"argv": ["info", str(tmp_path / "no" / "such" / "adapter")]},
        {"code": load.format(path="../outputs/rnu")},
        {"argv": ["predict", str(saved_segmentation["root"] / "adapter"), str(saved["images"])]},
    ]
    env = _env(hub.url, tmp_path / "home")
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")
    requests_before = len(hub.requests)
    _, above, typo, predict, push, absolute, python, segmentation = _run_steps(steps, env)
    assert len(hub.requests) == requests_before  # nothing reached the server
    _assert_clean_error(above, "No such folder: outputs/run", f"relative to a folder above this one: {run}")
    _assert_clean_error(typo, "No such folder: ../outputs/rnu", "Similar names in ../outputs/: run")
    _assert_clean_error(predict, "No such folder: ./run")
    _assert_clean_error(push, "No such folder: ../outputs/rnu")
    _assert_clean_error(absolute, f"No such folder: {tmp_path / 'no' / 'such' / 'adapter'}")
    assert python["result"].startswith("No such folder: ../outputs/rnu"), python
    _assert_clean_error(segmentation, "is a semantic segmentation adapter", "load_segmentation_adapter")
    assert "--base" not in segmentation["err"]


def test_a_hub_id_that_is_no_local_folder_says_both(hub, tmp_path):
    [info] = _run_steps([{"argv": ["info", "test-org/not-here"]}], _env(hub.url, tmp_path))
    _assert_clean_error(info, "No local folder 'test-org/not-here' here and no Hub repository of that name")


def test_card_snippet_on_an_mae_base_loads_without_transformers_warnings(tmp_path, monkeypatch, caplog):
    import transformers

    make_backbone("vit_mae").save_pretrained(tmp_path / "mae")
    model = get_peft_model(gated_vpt.load_base_model(tmp_path / "mae", num_labels=4), gated_vpt.GatedPromptConfig())
    randomize_adapter_(model, seed=4)
    model.eval().save_pretrained(tmp_path / "adapter")
    write_model_card(tmp_path / "adapter", model)
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", (tmp_path / "adapter" / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # transformers' default, whatever an earlier test set
    try:
        with caplog.at_level("WARNING"):
            ViTForImageClassification.from_pretrained("mae", num_labels=4)  # transformers' own messages, for contrast
            plain, _ = caplog.text, caplog.clear()
            scope: dict = {}
            exec(snippet, scope)
    finally:
        transformers.logging.set_verbosity(verbosity)
    assert "can yield errors" in plain and "LOAD REPORT" in plain
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == []
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(scope["model"](x).logits, model(x).logits)
    assert type(scope["base"]).__name__ == "ViTForImageClassification" and scope["base"].config.model_type == "vit_mae"


def test_pushed_configs_hold_no_local_absolute_path(hub, saved, pushed, cli_online):
    configs = {repo: json.loads(hub.files(repo)["adapter_config.json"]) for repo in hub.repos}
    assert {REPO, "test-org/pushed-by-cli"} <= set(configs)
    assert configs[REPO]["base_model_name_or_path"] == "base"  # was the absolute path of saved["base"]
    assert json.loads((saved["v1"] / "adapter_config.json").read_text())["base_model_name_or_path"] == str(saved["base"])
    for repo, config in configs.items():
        assert not Path(config.get("base_model_name_or_path") or "").is_absolute(), (repo, config)
