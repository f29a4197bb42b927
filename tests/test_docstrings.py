"""Every ``>>>`` example in gated_vpt's docstrings runs and prints what it says (users copy them).

Each docstring runs as a doctest in a fresh temporary working directory with its module's namespace. Examples
whose point is a download (the Hub, the official checkpoints) carry ``# doctest: +SKIP`` on those lines only.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import pytest

import gated_vpt

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


class _FencedParser(doctest.DocTestParser):
    """The docstrings put examples in Markdown fences (transformers' style): a fence line ends an expected output."""

    def parse(self, string: str, name: str = "<string>") -> list:
        return super().parse(re.sub(r"^[ \t]*```\w*[ \t]*$", "", string, flags=re.MULTILINE), name)


def _examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(parser=_FencedParser(), exclude_empty=True)
    found = []
    for info in pkgutil.walk_packages(gated_vpt.__path__, prefix="gated_vpt."):
        module = importlib.import_module(info.name)
        found += [test for test in finder.find(module, info.name) if test.examples]
    found += [test for test in finder.find(gated_vpt, "gated_vpt") if test.examples]
    return sorted({test.name: test for test in found}.values(), key=lambda test: test.name)


EXAMPLES = _examples()


def test_the_public_api_examples_are_collected():
    names = {test.name.removeprefix("gated_vpt.") for test in EXAMPLES}
    assert {
        "config.GatedPromptConfig", "layer.GatedPromptBlock", "model.GatedPromptModel", "heads.init_classifier_",
        "loading.load_adapter", "introspection.GateReport", "segmentation.model.SegmentationModel",
        "segmentation.setr.ProgressiveUpsamplingHead", "recipes.load_recipe",
    } <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[test.name for test in EXAMPLES])
def test_docstring_example_runs(example, tmp_path, monkeypatch, single_thread):
    monkeypatch.chdir(tmp_path)
    report: list[str] = []
    result = doctest.DocTestRunner(optionflags=FLAGS).run(example, out=report.append)
    assert result.failed == 0, "".join(report)
