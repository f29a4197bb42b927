"""Every code block in README.md and docs/*.md runs as written. The rule, for whoever writes docs:

- ```python blocks run, in document order, one namespace and one fresh working directory per file, against the
  local Hub server (tests/hub_server.py). It holds tiny stand-ins for the Hub ids the docs use:
  ``facebook/vit-mae-base`` (a 12-block, 32-wide MAE encoder for 16x16 images) and the adapters
  ``user/mae-cub-gated``, ``user/mae-cars-gated`` and ``user/mae-dogs-vpt`` (200 classes). A block may use these
  names without defining them, as the text leaves them to the reader: ``model`` (a gated PeftModel on that base,
  2 prompt tokens like the adapters, so they mix in one batch),
  ``pixel_values`` (4 images), ``masks`` (their segmentation masks, 150 classes), ``pred`` and ``mask`` (one
  predicted and one true mask, as numpy arrays).
- ```bash blocks are checked line by line (``&&`` splits a line, ``# comments`` and ``VAR=value`` prefixes are
  dropped): ``gated-vpt`` runs for ``--help``, ``info`` and ``pull``; its other commands and the example scripts
  (``accelerate launch [its options] examples/<script>.py ...``, ``python examples/<script>.py ...``) are parsed
  by their own argument parsers, from the repository root (nothing trains or uploads). ``gated-vpt convert`` and
  ``gated-vpt protocol``, and any command with a ``<placeholder>`` or ``...``, only have their option names checked
  against their ``--help``. ``pip install`` and ``python -m pytest`` are what CI runs, and
  are skipped.
- A block right after a line ``<!-- docs-test: skip (why) -->`` is only compiled (python) or has the option names
  of its gated-vpt and example-script commands checked (bash; other commands, e.g. downloads or shell loops, are
  left alone). Other fences (json, bibtex, text) are not code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub_server import running_hub

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKER = re.compile(r"<!-- docs-test: skip \(.+\) -->\s*$")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def code_blocks() -> list[dict]:
    """The python and bash blocks of the docs, in order: file, language, line, code, skip."""
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) not in ("python", "bash"):
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            blocks.append({"file": str(path.relative_to(ROOT)), "language": match.group(1),
                           "line": text[: match.start()].count("\n") + 1, "code": match.group(2),
                           "skip": bool(SKIP_MARKER.search(before))})
    return blocks


BLOCKS = code_blocks()

DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, os, shlex, sys, traceback
    from pathlib import Path

    import numpy as np
    import torch
    from huggingface_hub import HfApi
    from peft import get_peft_model
    from transformers import ViTForImageClassification, ViTMAEConfig, ViTMAEModel

    import gated_vpt
    from conftest import load_example
    from gated_vpt import cli
    from gated_vpt.hub import push_adapter

    BASE_ID = "facebook/vit-mae-base"
    SCRIPTS = ("train_image_classification", "train_semantic_segmentation", "compare_methods", "pretrain_mae")
    blocks, root, repository = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def hub_stand_ins():
        torch.manual_seed(0)
        config = ViTMAEConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                              intermediate_size=64)
        ViTMAEModel(config).save_pretrained(root / "base")
        HfApi().create_repo(BASE_ID, exist_ok=True)
        HfApi().upload_folder(folder_path=root / "base", repo_id=BASE_ID)
        for repo, gated in (("user/mae-cub-gated", True), ("user/mae-cars-gated", True), ("user/mae-dogs-vpt", False)):
            config = gated_vpt.GatedPromptConfig(num_prompt_tokens=2, gated=gated, learnable_temperature=gated)
            push_adapter(get_peft_model(classifier(), config), repo)

    def classifier():
        return ViTForImageClassification.from_pretrained(BASE_ID, num_labels=200)

    def placeholders():
        generator = np.random.default_rng(0)
        return {"model": get_peft_model(classifier(), gated_vpt.GatedPromptConfig(num_prompt_tokens=2)),
                "pixel_values": torch.randn(4, 3, 16, 16), "masks": torch.randint(0, 150, (4, 16, 16)),
                "pred": generator.integers(0, 150, (16, 16)), "mask": generator.integers(0, 150, (16, 16))}

    def help_text(program, args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            if program == "gated-vpt":  # the help of the (sub)command: the words before the first option
                words = [a for a in args[: next((i for i, a in enumerate(args) if a.startswith("-")), len(args))]]
                cli.main([*words, "--help"])
            else:
                load_example(program).parse_args(["--help"])
        return out.getvalue()

    def check_command(words, skip):
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # VAR=value prefixes
        if not words or words[0] == "pip" or words[:3] == ["python", "-m", "pytest"]:
            return "skipped"
        if words[0] == "gated-vpt":
            program, args = "gated-vpt", words[1:]
        else:
            scripts = [i for i, w in enumerate(words) if w.startswith("examples/") and w.endswith(".py")]
            if (words[0] not in ("accelerate", "python") or not scripts) and skip:
                return "not checked (marked skip)"
            if words[0] not in ("accelerate", "python") or not scripts:
                raise ValueError(f"no rule for the command {words[0]!r}: mark the block <!-- docs-test: skip (why) -->")
            program, args = Path(words[scripts[0]]).stem, words[scripts[0] + 1:]
            assert program in SCRIPTS, program
        if "--help" in args:
            assert help_text(program, args), "no help"
            return "ran"
        own_parser = program == "gated-vpt" and args[:1] in (["convert"], ["protocol"])  # parsed only when run
        if skip or own_parser or "..." in args or any("<" in a for a in args):
            text = help_text(program, args)
            unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in text]
            assert not unknown, f"options {unknown} are not in `{program} --help`"
            return "options checked"
        if program != "gated-vpt":
            with contextlib.chdir(repository):  # scripts run from a checkout (recipes in hub_configs/, ...)
                load_example(program).parse_args(args)
            return "parsed"
        if args[:1] in (["info"], ["pull"]):
            assert cli.main(args) == 0, "exit status"
            return "ran"
        cli._parser().parse_args(args)
        return "parsed"

    hub_stand_ins()
    scopes = {}
    for block in blocks:
        folder = root / block["file"].replace("/", "_")
        folder.mkdir(exist_ok=True)
        os.chdir(folder)
        out, result = io.StringIO(), {"ok": True, "detail": []}
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                if block["language"] == "python":
                    code = compile(block["code"], f"{block['file']}:{block['line']}", "exec")
                    if not block["skip"]:
                        exec(code, scopes.setdefault(block["file"], placeholders()))
                else:
                    for line in block["code"].replace("\\\\\\n", " ").splitlines():
                        for command in line.split("&&"):
                            words = shlex.split(command, comments=True)
                            if words:
                                result["detail"].append([command.strip(), check_command(words, block["skip"])])
        except BaseException:
            result = {"ok": False, "detail": traceback.format_exc() + out.getvalue()[-2000:]}
        print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    home, work = tmp_path_factory.mktemp("docs_home"), tmp_path_factory.mktemp("docs_work")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    with running_hub() as hub:
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_TOKEN="hf_docs_test_token", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   HF_HUB_OFFLINE="0", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
        process = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(BLOCKS), str(work), str(ROOT)], env=env, cwd=work,
                                 capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    results = [json.loads(line) for line in process.stdout.splitlines() if line.startswith('{"ok"')]
    assert len(results) == len(BLOCKS), process.stdout[-3000:] + process.stderr[-3000:]
    return results


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"{b['file']}:{b['line']}" for b in BLOCKS])
def test_doc_block_runs_as_written(checked, index):
    result = checked[index]
    assert result["ok"], f"{BLOCKS[index]['file']} line {BLOCKS[index]['line']}:\n{result['detail']}"


def test_the_docs_have_code_and_each_bash_command_has_a_rule():
    assert {b["file"] for b in BLOCKS} >= {"README.md", "docs/HUB.md", "docs/TRAINING.md"}
    assert any(b["language"] == "python" and not b["skip"] for b in BLOCKS)
