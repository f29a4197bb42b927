"""The eval-mode cache of the deep prompts' keys and values (``GatedPromptBlock._cached_prompt_keys_values``): an
entry must be recomputed whenever anything it was computed from changes (the prompts, the block's first norm, the
key and value projections; in place, by replacing ``.data``, or the precision: dtype and autocast), and must never
serve a forward that needs gradients. Each test compares with the plain path, which has no cache."""

import pytest
import torch

import gated_vpt
from conftest import BACKBONE_NAMES, images, main_output
from gated_vpt.fast_path import BlockParts
from test_fast_path import adapted, blocks, fast_output, plain_output

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_a_bfloat16_autocast_forward_does_not_leave_its_keys_for_float32_ones(backbone):
    """Before the cache knew its precision, float32 forwards after one under CPU autocast reused the bfloat16-rounded
    prompt keys and values: 2e-4 to 6e-3 off the plain path (about 1e-6 on a fresh model), depending on the backbone."""
    model = adapted(backbone, "vpt_deep", dtype=torch.float32).eval()
    pixels = images()
    plain = plain_output(model, pixels)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_first = main_output(model(pixels))
    assert any(block._prompt_kv_cache for block in blocks(model))
    after = fast_output(model, pixels)
    torch.testing.assert_close(after, plain, rtol=0, atol=2e-5)
    # the other way round: an autocast forward after float32 ones computes its entries under autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_again = main_output(model(pixels))
    assert torch.equal(autocast_again, autocast_first)


def test_entries_follow_the_input_dtype(pixels):
    model = adapted("vit_clf", "vpt_deep", dtype=torch.float64).eval()
    fast_output(model, pixels.double())
    with torch.no_grad():
        low = main_output(model(pixels.float()))  # float32 images into a float64 model: the block computes in float32
        with gated_vpt.fast_path(False):
            plain_low = main_output(model(pixels.float()))
    assert low.dtype == plain_low.dtype
    torch.testing.assert_close(low, plain_low, rtol=0, atol=1e-12)


def _source(model, block_index: int, name: str) -> torch.Tensor:
    """One tensor a block's prompt keys and values come from, found through the backbone table's layout."""
    block = blocks(model)[block_index]
    if name == "prompt":
        return block.gvpt_prompt["default"]
    parts = BlockParts.of(block.base_layer, block._layout)
    module, attribute = name.split(".")
    return getattr(getattr(parts, module), attribute)


# not the key bias: it shifts every key of a query by the same amount, which softmax ignores
SOURCES = ["prompt", "norm_before.weight", "norm_before.bias", "key.weight", "value.weight", "value.bias"]


@pytest.mark.parametrize("how", ["in_place", "data_replaced"])
@pytest.mark.parametrize("source", SOURCES)
def test_an_entry_is_recomputed_when_any_of_its_sources_changes(source, how, pixels):
    model = adapted("vit_clf", "vpt_deep").eval()
    pixels = pixels.double()
    before = fast_output(model, pixels)
    tensor = _source(model, 2, source)
    changed = -2.0 * tensor.detach() + 0.5
    if how == "in_place":
        with torch.no_grad():
            tensor.copy_(changed)
    else:
        tensor.data = changed.clone()  # a new storage; the version counter does not move
    after = fast_output(model, pixels)
    assert (after - before).abs().max() > 1e-3, "the change must matter for this test to mean anything"
    torch.testing.assert_close(after, plain_output(model, pixels), rtol=0, atol=1e-12)


def test_an_in_place_change_through_data_is_seen_after_eval(pixels):
    """``p.data.mul_()`` bypasses PyTorch's version counter, so the cache cannot see it; ``model.eval()`` (as the
    README says) drops every entry."""
    model = adapted("vit_clf", "vpt_deep").eval()
    pixels = pixels.double()
    before = fast_output(model, pixels)
    _source(model, 1, "norm_before.weight").data.mul_(-2.0)
    model.eval()
    after = fast_output(model, pixels)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, plain_output(model, pixels), rtol=0, atol=1e-12)


def test_eval_mode_with_gradients_takes_no_entry_and_backpropagates_twice(pixels):
    """Eval mode with autograd on (e.g. saliency maps, adversarial examples): two forwards, each with its own
    backward, give the plain path's gradients; an entry kept from the first graph would fail the second backward or
    send no gradient to the prompts."""
    pixels = pixels.double()

    def gradients(fast: bool) -> dict:
        model = adapted("dinov2", "vpt_deep").eval()
        with gated_vpt.fast_path(fast):
            for weights in (1.0, -0.5):
                (weights * main_output(model(pixels)).square()).sum().backward()
        assert not any(block._prompt_kv_cache for block in blocks(model))
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fast, plain = gradients(True), gradients(False)
    assert any("gvpt_prompt" in name for name in plain)
    for name, grad in plain.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(fast[name], grad, rtol=1e-9, atol=1e-12, msg=name)
