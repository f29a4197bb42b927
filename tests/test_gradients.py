"""Gradients: what training follows, against the independent reference (tests/reference.py) and numerically.

The forward matrix (test_backbones.py) cannot see a wrong backward pass: gated_vpt computes the gate and the
temperature with hand-written autograd functions, and a forward that is right to the last bit can still train
wrongly. Here the gradients of every adapter parameter (prompts, gate logits, temperatures, the saved classifier)
are compared in float64 with the gradients autograd computes through the reference's plain-PyTorch forward, on the
fast path and the plain path; and the two autograd functions are checked against finite differences.
"""

import copy
import re

import pytest
import torch
from peft import get_peft_model

import gated_vpt
from conftest import BACKBONE_NAMES, make_backbone, randomize_adapter_
from gated_vpt.gate import divide_query, gate_prompts
from reference import read_adapter, reference_outputs
from test_backbones import VARIANTS, expected_settings, outputs, variant_config

pytestmark = pytest.mark.usefixtures("single_thread")

_KEY = re.compile(r"(?:^|\.)(?:layers?|blocks)\.(\d+)\.gvpt_(prompt|gate|temperature)\.default$")
_HEAD = re.compile(r"(?:^|\.)(?:classifier|head)\.modules_to_save\.default\.(weight|bias)$")  # transformers', timm's
CASES = [("vit_clf", variant) for variant in VARIANTS] + [(b, "gated") for b in BACKBONE_NAMES if b != "vit_clf"]


def _loss(outputs: dict, weights: dict) -> torch.Tensor:
    """A scalar that depends on every output value (random weights, so no direction is left out)."""
    return sum((outputs[name] * weights[name]).sum() for name in sorted(outputs))


def _model_gradients(model) -> dict:
    gradients = {}
    for name, parameter in model.named_parameters():
        match = _KEY.search(name)
        if match:
            gradients[(match.group(2), int(match.group(1)))] = parameter.grad
        elif _HEAD.search(name):
            gradients[("classifier", _HEAD.search(name).group(1))] = parameter.grad
    return gradients


def _reference_leaves(adapter) -> dict:
    leaves = {}
    for kind in ("prompts", "gates", "temperatures"):
        for index, value in getattr(adapter, kind).items():
            leaves[(kind.rstrip("s"), index)] = value.requires_grad_()
    if adapter.classifier is not None:
        leaves[("classifier", "weight")], leaves[("classifier", "bias")] = (t.requires_grad_() for t in adapter.classifier)
    return leaves


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "plain_path"])
@pytest.mark.parametrize("backbone, variant", CASES)
def test_adapter_gradients_match_the_reference(backbone, variant, fast, pixels):
    base = make_backbone(backbone)
    frozen = copy.deepcopy(base).double().requires_grad_(False)
    config = variant_config(variant, backbone)
    model = get_peft_model(base, gated_vpt.GatedPromptConfig(num_prompt_tokens=3, **config))
    randomize_adapter_(model)
    model.eval().double()  # eval: no prompt dropout; gradients still flow
    pixels = pixels.double()
    with gated_vpt.fast_path(fast):
        got = outputs(model, pixels, backbone, reference_outputs(frozen, pixels))  # the names the reference gives
    weights = {name: torch.randn(value.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
               for name, value in got.items()}
    _loss(got, weights).backward()
    gradients = _model_gradients(model)

    # The forward clamped the stored temperatures in place before using them, so the reference starts from the
    # stored (now in-range) values: the gradient is the one with respect to the value that was used.
    adapter = read_adapter(model, **expected_settings(config, backbone))
    leaves = _reference_leaves(adapter)
    _loss(reference_outputs(frozen, pixels, adapter), weights).backward()

    assert set(gradients) == set(leaves) and any(kind == "gate" for kind, _ in leaves) == (variant in ("gated", "gates_only", "start_block_2", "other_pooling"))
    for key, leaf in leaves.items():
        assert gradients[key] is not None, key
        assert leaf.grad.abs().max() > 0, key  # the reference sees each parameter at all
        torch.testing.assert_close(gradients[key], leaf.grad, rtol=1e-9, atol=1e-12, msg=str(key))


@pytest.mark.parametrize("in_place", [False, True])
def test_the_gate_function_has_the_gradients_of_its_formula(in_place):
    generator = torch.Generator().manual_seed(3)
    output = torch.randn(2, 7, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    prompts_in = torch.randn(2, 3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    for logit in (torch.tensor(0.7, dtype=torch.float64), torch.randn(2, 1, 1, dtype=torch.float64, generator=generator)):
        logit.requires_grad_()

        def gated(output, prompts_in, logit):
            # in place needs a tensor nobody else holds, as the block's fresh output is
            return gate_prompts(output.clone() if in_place else output, prompts_in, logit, 2, in_place=in_place)

        assert torch.autograd.gradcheck(gated, (output, prompts_in, logit))
        g = torch.sigmoid(logit)
        expected = torch.cat((output[:, :2], g * output[:, 2:5] + (1 - g) * prompts_in, output[:, 5:]), dim=1)
        torch.testing.assert_close(gated(output, prompts_in, logit), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("contiguous", [False, True])
def test_the_temperature_function_has_the_gradients_of_a_division(contiguous):
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=generator).transpose(1, 2).requires_grad_()
    for temperature in (torch.tensor(0.3, dtype=torch.float64), 0.5 + torch.rand(2, dtype=torch.float64, generator=generator)):
        temperature.requires_grad_()
        assert torch.autograd.gradcheck(lambda q, t: divide_query(q, t, contiguous=contiguous), (query, temperature))
        divided = divide_query(query, temperature, contiguous=contiguous)
        torch.testing.assert_close(divided, query / temperature.reshape(-1, *(1,) * (query.dim() - 1)) if temperature.dim() else query / temperature)
