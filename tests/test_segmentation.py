"""Semantic segmentation: SETR-PUP heads, the segmentation model with gated prompts, data checks and transforms,
the offline mean-IoU metric, sliding-window / multi-scale inference, and learning the synthetic shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_backbone
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

import gated_vpt
from gated_vpt.segmentation import (
    HEAD_CONFIG_NAME,
    SegmentationHeadConfig,
    SegmentationModel,
    get_segmentation_peft_model,
    load_segmentation_adapter,
    save_segmentation_adapter,
)
from gated_vpt.segmentation.data import (
    LabelSpec,
    SegmentationTransform,
    collate_eval,
    find_image_mask_pairs,
    reduce_labels,
)
from gated_vpt.segmentation.inference import InferenceSettings, _window_starts, evaluate_segmentation, predict
from gated_vpt.segmentation.metrics import load_mean_iou
from gated_vpt.segmentation.metrics.mean_iou import area_totals, scores_from_totals
from gated_vpt.segmentation.setr import ProgressiveUpsamplingHead, num_upsampling_stages, patch_tokens, stage_sizes
from gated_vpt.segmentation.synthetic import SHAPES_LABELS, shapes_dataset

SEGMENTATION_BACKBONES = ("vit", "vit_mae", "dinov2", "deit", "dinov2_reg", "vit_msn", "dinov3")


def segmentation_model(name: str = "vit", aux_blocks=(1, 2), num_labels: int = 5, **prompts) -> torch.nn.Module:
    backbone = make_backbone(name)
    torch.manual_seed(0)
    model = SegmentationModel(backbone, SegmentationHeadConfig(num_labels=num_labels, aux_blocks=aux_blocks, channels=8))
    config = gated_vpt.GatedPromptConfig(**{"num_prompt_tokens": 3, "gate_init": 1.0, "prompt_dropout": 0.0, **prompts})
    return get_segmentation_peft_model(model, config)


# --- the heads ---------------------------------------------------------------------------------------------------

def test_patch_tokens_are_the_last_rows_on_the_grid():
    special, prompts, grid = 2, 3, (2, 3)
    tokens = torch.randn(1, special + prompts + 6, 4)
    feature_map = patch_tokens(tokens, grid)
    for row in range(2):
        for col in range(3):
            assert torch.equal(feature_map[0, :, row, col], tokens[0, special + prompts + row * 3 + col])


def test_stage_count_and_sizes_follow_the_patch_size():
    assert [num_upsampling_stages(p) for p in (16, 14, 8, 4)] == [4, 4, 3, 2]
    assert stage_sizes((32, 32), (512, 512), 4) == [(64, 64), (128, 128), (256, 256), (512, 512)]
    assert stage_sizes((37, 37), (518, 518), 4)[-1] == (518, 518)  # patch 14: the last stage lands exactly
    assert stage_sizes((32, 32), (512, 512), 2) == [(128, 128), (512, 512)]  # SETR's auxiliary heads: x4 twice


def test_head_maps_tokens_to_pixel_logits():
    head = ProgressiveUpsamplingHead(hidden_size=16, num_labels=7, num_stages=3, channels=8).eval()
    tokens = torch.randn(2, 1 + 5 + 4 * 6, 16)
    assert head(tokens, grid_size=(4, 6), output_size=(35, 50)).shape == (2, 7, 35, 50)
    with pytest.raises(ValueError, match="fewer than"):
        head(tokens[:, :10], grid_size=(4, 6), output_size=(32, 48))


def _pup_by_hand(head, tokens, grid, output_size, norm):
    """SETR-PUP as documented, from the head's weights: LayerNorm (eps 1e-6) on the tokens, the last grid_h * grid_w
    rows laid out row-major on the grid, then per stage conv 3x3 (no bias) -> norm -> ReLU -> bilinear resize
    (align_corners False) to a geometric progression of sizes ending exactly at output_size, then a 1x1 conv."""
    ln = head.token_norm
    x = (tokens - tokens.mean(-1, keepdim=True)) / torch.sqrt(tokens.var(-1, unbiased=False, keepdim=True) + 1e-6)
    x = x * ln.weight + ln.bias
    (grid_h, grid_w), batch = grid, tokens.shape[0]
    x = x[:, -grid_h * grid_w :].reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2)
    stages = len(head.stages)
    for index, stage in enumerate(head.stages, start=1):
        x = F.conv2d(x, stage.conv.weight, padding=1)
        if norm == "batch":
            shape = (1, -1, 1, 1)
            bn = stage.norm
            x = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            x = x * bn.weight.view(shape) + bn.bias.view(shape)
        else:
            gn = stage.norm
            groups = x.view(batch, gn.num_groups, -1)
            groups = (groups - groups.mean(-1, keepdim=True)) / torch.sqrt(groups.var(-1, unbiased=False, keepdim=True) + gn.eps)
            x = groups.view_as(x) * gn.weight.view(1, -1, 1, 1) + gn.bias.view(1, -1, 1, 1)
        x = torch.clamp(x, min=0)
        size = output_size if index == stages else tuple(
            round(g * (o / g) ** (index / stages)) for g, o in zip(grid, output_size)
        )
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    weight = head.classifier.weight[:, :, 0, 0]
    return torch.einsum("kc,bchw->bkhw", weight, x) + head.classifier.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_head_output_matches_an_independent_computation(norm):
    torch.manual_seed(0)
    head = ProgressiveUpsamplingHead(hidden_size=16, num_labels=7, num_stages=3, channels=8, norm=norm).eval()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
        for stage in head.stages:
            if norm == "batch":
                stage.norm.running_mean.normal_()
                stage.norm.running_var.uniform_(0.5, 2.0)
            else:
                assert stage.norm.num_groups == 8  # gcd(32, channels)
        tokens = 2 + 3 * torch.randn(2, 1 + 5 + 4 * 6, 16)
        got = head(tokens, grid_size=(4, 6), output_size=(35, 50))
        want = _pup_by_hand(head, tokens, (4, 6), (35, 50), norm)
    assert got.shape == (2, 7, 35, 50)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# --- the model with gated prompts --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SEGMENTATION_BACKBONES)
def test_prompts_gates_and_heads_train_and_save_in_one_file(name, tmp_path):
    model = segmentation_model(name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".gvpt_" in n or ".modules_to_save.default." in n for n in trainable)
    assert any("decode_head" in n for n in trainable) and any("aux_heads" in n for n in trainable)
    assert any("gvpt_gate" in n for n in trainable) and any("gvpt_temperature" in n for n in trainable)

    model.train()
    images, labels = torch.randn(2, 3, 20, 28), torch.randint(0, 5, (2, 20, 28))  # not the pretraining size (16)
    labels[0, :3] = 255
    output = model(images, labels=labels)
    assert output.logits.shape == (2, 5, 20, 28)
    output.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)

    model.eval()
    with torch.no_grad():
        expected = model(images).logits
    save_segmentation_adapter(model, tmp_path)
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert any("decode_head" in k for k in weights) and any("aux_heads" in k and "running_mean" in k for k in weights)
    assert (tmp_path / HEAD_CONFIG_NAME).is_file()
    reloaded = load_segmentation_adapter(make_backbone(name), tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(images).logits, expected, atol=1e-5)


def test_adapter_weights_alone_rebuild_the_heads(tmp_path):
    model = segmentation_model("dinov2", aux_blocks=(0, 2), num_labels=4).eval()
    images = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = model(images).logits
    save_segmentation_adapter(model, tmp_path)
    (tmp_path / HEAD_CONFIG_NAME).unlink()  # e.g. an adapter pushed without it
    reloaded = load_segmentation_adapter(make_backbone("dinov2"), tmp_path).eval()
    settings = reloaded.get_base_model().head_config
    assert (settings.num_labels, settings.aux_blocks, settings.channels, settings.norm) == (4, (0, 2), 8, "batch")
    with torch.no_grad():
        assert torch.allclose(reloaded(images).logits, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channels": 10**7}, r"channels 10000000 vs 8 in the weights"),  # would build a decoder of many GB
        ({"num_labels": 10**6, "ignore_index": -1}, r"num_labels 1000000 vs 4"),
        ({"aux_blocks": [1]}, r"aux_blocks \(1,\) vs \(0, 2\)"),
        ({"norm": "group"}, r"norm 'group' vs 'batch'"),
        ({"channels": "8"}, r"channels='8' is invalid"),
        ({"aux_blocks": "02"}, r"aux_blocks='02' is invalid"),
        ({"id2label": ["a", "b"]}, r"id2label=\['a', 'b'\] is invalid"),
        ({"extra": 1}, r"unknown fields \['extra'\]"),
        (None, r"holds a JSON list"),
    ],
)
def test_head_settings_from_a_stranger_are_checked_against_the_weights_before_building(tmp_path, change, message):
    save_segmentation_adapter(segmentation_model("dinov2", aux_blocks=(0, 2), num_labels=4), tmp_path)
    path = tmp_path / HEAD_CONFIG_NAME
    values = json.loads(path.read_text())
    path.write_text(json.dumps([values] if change is None else {**values, **change}))
    with pytest.raises(ValueError, match=message):
        load_segmentation_adapter(make_backbone("dinov2"), tmp_path)


@pytest.mark.parametrize(
    ("replacement", "message"),
    [  # both sets of head settings agree with this lone tensor: the heads they describe are checked before building
        (torch.zeros(4, 6000, 1, 1), r"stages\.0\.conv\.weight has shape \[8, 32, 3, 3\], expected \[6000, 32, 3, 3\] for heads of 6000 channels"),
        (torch.zeros(4, 6000, 0, 0), r"decode_head\.classifier\.weight is empty \(shape \[4, 6000, 0, 0\]\)"),
    ],
)
def test_a_head_tensor_that_claims_other_channels_is_refused_before_any_head_is_built(tmp_path, replacement, message):
    save_segmentation_adapter(segmentation_model("dinov2", aux_blocks=(0, 2), num_labels=4), tmp_path)
    (tmp_path / HEAD_CONFIG_NAME).unlink()
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    tensors["base_model.model.decode_head.classifier.weight"] = replacement
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=message):
        load_segmentation_adapter(make_backbone("dinov2"), tmp_path)


def test_auxiliary_losses_count_in_training_only():
    model = segmentation_model("vit", aux_blocks=(1, 2))
    segmenter = model.get_base_model()
    images, labels = torch.randn(2, 3, 16, 24), torch.randint(0, 5, (2, 16, 24))
    model.eval()
    with torch.no_grad():
        output = model(images, labels=labels)
    assert torch.allclose(output.loss, F.cross_entropy(output.logits, labels, ignore_index=255))

    model.train()
    with torch.no_grad():
        output = model(images, labels=labels)
        # Independent route to the intermediate blocks: transformers' own hidden states, recorded on the inner blocks.
        hidden = segmenter.backbone(images, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        aux = segmenter.aux_heads({1: hidden[2], 2: hidden[3]}, (4, 6), (16, 24))
    expected = F.cross_entropy(output.logits, labels) + 0.4 * sum(F.cross_entropy(a, labels) for a in aux.values())
    assert torch.allclose(output.loss, expected, atol=1e-5)


def test_bad_labels_and_settings_are_refused():
    model = segmentation_model("vit")
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        model(images, labels=torch.zeros(1, 12, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside the class range 0..4"):
        model(images, labels=torch.full((1, 16, 16), 7))
    with pytest.raises(ValueError, match="aux_blocks"):
        SegmentationModel(make_backbone("vit"), SegmentationHeadConfig(num_labels=3, aux_blocks=(4,)))
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationHeadConfig(num_labels=3, ignore_index=2)
    segmenter = SegmentationModel(make_backbone("vit"), SegmentationHeadConfig(num_labels=3))
    with pytest.raises(ValueError, match="leaves out"):
        get_segmentation_peft_model(segmenter, gated_vpt.GatedPromptConfig(modules_to_save=["decode_head"]))
    segmenter = SegmentationModel(make_backbone("vit"), SegmentationHeadConfig(num_labels=3, aux_blocks=(1,), channels=8))
    several = gated_vpt.GatedPromptConfig(modules_to_save=["decode_head", "aux_heads", "classifier"])
    with pytest.raises(ValueError, match=r"'classifier' matches several modules \(decode_head\.classifier, aux_heads"):
        get_segmentation_peft_model(segmenter, several)
    assert not any(isinstance(m, gated_vpt.GatedPromptBlock) for m in segmenter.modules())


# --- data --------------------------------------------------------------------------------------------------------

def test_mask_size_mismatch_rgb_masks_and_out_of_range_labels_are_refused():
    spec = LabelSpec(num_labels=4)
    image = PILImage.new("RGB", (10, 8))
    with pytest.raises(ValueError, match="exactly its image's size"):
        spec.prepare(image, PILImage.new("L", (10, 9)))
    with pytest.raises(ValueError, match="single-channel"):
        spec.prepare(image, PILImage.new("RGB", (10, 8)))
    with pytest.raises(ValueError, match=r"\[9\] outside the class range"):
        spec.prepare(image, PILImage.new("L", (10, 8), color=9))
    spec.prepare(image, PILImage.new("L", (10, 8), color=255))  # the ignore index is fine


def test_reduce_labels_maps_other_to_ignore():
    mask = torch.tensor([[0, 1, 150], [2, 0, 255]])
    assert reduce_labels(mask, 255).tolist() == [[255, 0, 149], [1, 255, 255]]


def test_train_transform_keeps_image_and_mask_aligned():
    # Four quadrants whose colour encodes their label; after rescale, crop, flip and padding every labelled pixel
    # two or more pixels away from a label boundary must still show its label's colour (bilinear blurs the edges).
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[:20, 20:], labels[20:, :20], labels[20:, 20:] = 1, 2, 3
    image = np.repeat((labels * 60)[..., None], 3, axis=2).astype(np.uint8)
    transform = SegmentationTransform(LabelSpec(4), crop_size=32, train=True, mean=(0, 0, 0), std=(1, 1, 1), jitter=False)
    for seed in range(4):
        pixels, mask = transform(PILImage.fromarray(image), PILImage.fromarray(labels), torch.Generator().manual_seed(seed))
        assert pixels.shape == (3, 32, 32) and mask.shape == (32, 32)
        values = mask.float()[None, None]
        uniform = F.max_pool2d(values, 5, 1, 2) == -F.max_pool2d(-values, 5, 1, 2)
        interior = uniform[0, 0] & (mask != 255)
        assert interior.sum() > 50
        assert torch.allclose(pixels[0][interior] * 255, mask[interior].float() * 60, atol=0.5)  # std 1 on the 0..1 scale
    test = SegmentationTransform(LabelSpec(4), crop_size=32, train=False, mean=(0, 0, 0), std=(1, 1, 1))
    pixels, mask = test(PILImage.fromarray(image), PILImage.fromarray(labels))
    assert pixels.shape == (3, 32, 32) and mask.shape == (40, 40)  # metrics are computed on the original mask


def test_local_folder_of_image_mask_pairs(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "annotations" / "a").mkdir(parents=True)
    for name in ("x", "y"):
        PILImage.new("RGB", (6, 4)).save(tmp_path / "images" / "a" / f"{name}.jpg")
        PILImage.new("L", (6, 4), color=1).save(tmp_path / "annotations" / "a" / f"{name}.png")
    data = find_image_mask_pairs(tmp_path)
    assert len(data) == 2 and np.array(data[0]["annotation"]).max() == 1
    PILImage.new("RGB", (6, 4)).save(tmp_path / "images" / "a" / "z.jpg")
    with pytest.raises(FileNotFoundError, match="no mask"):
        find_image_mask_pairs(tmp_path)


# --- the metric --------------------------------------------------------------------------------------------------

def _reference_scores(predictions, references, num_labels, ignore_index):
    """Per-class IoU by set counting, written independently of the metric module."""
    ious, correct, labelled = [], 0, 0
    for c in range(num_labels):
        inter = union = 0
        for p, r in zip(predictions, references):
            valid = r != ignore_index
            inter += int(((p == c) & (r == c) & valid).sum())
            union += int((((p == c) | (r == c)) & valid).sum())
        ious.append(inter / union if union else float("nan"))
    for p, r in zip(predictions, references):
        valid = r != ignore_index
        correct += int(((p == r) & valid).sum())
        labelled += int(valid.sum())
    return np.nanmean(ious), correct / labelled, ious


def test_mean_iou_metric_matches_an_independent_count():
    rng = np.random.default_rng(0)
    references = [rng.integers(0, 4, size=(6, 7)) for _ in range(3)]
    references[0][0, :] = 255
    references[1][references[1] == 3] = 1  # class 3 only predicted in some images
    predictions = [np.where(rng.random(r.shape) < 0.6, r, rng.integers(0, 4, size=r.shape)) % 255 for r in references]
    predictions = [np.clip(p, 0, 3) for p in predictions]
    result = load_mean_iou().compute(predictions=predictions, references=references, num_labels=5, ignore_index=255)
    miou, accuracy, ious = _reference_scores(predictions, references, 5, 255)
    assert result["mean_iou"] == pytest.approx(miou)
    assert result["overall_accuracy"] == pytest.approx(accuracy)
    np.testing.assert_allclose(result["per_category_iou"], ious)
    assert np.isnan(result["per_category_iou"][4])  # never labelled, never predicted
    streamed = sum(area_totals(p, r, 5, 255) for p, r in zip(predictions, references))
    assert scores_from_totals(streamed)["mean_iou"] == pytest.approx(result["mean_iou"])


# --- inference ---------------------------------------------------------------------------------------------------

def test_windows_cover_the_image():
    for length, crop, stride in ((100, 32, 21), (32, 32, 21), (20, 32, 21), (65, 32, 32)):
        starts = _window_starts(length, crop, stride)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            assert 0 <= s and s + min(crop, length) <= length
            covered[s : s + crop] = True
        assert covered.all()


def test_flip_multi_scale_and_sliding_prediction_against_direct_computation():
    model = segmentation_model("vit", aux_blocks=()).eval()
    image = torch.randn(3, 16, 24)
    with torch.no_grad():
        plain = model(image[None]).logits[0].softmax(0)
        flipped = model(image.flip(-1)[None]).logits[0].flip(-1).softmax(0)
        half = F.interpolate(image[None], size=(8, 12), mode="bilinear", align_corners=False)
        half = F.interpolate(model(half).logits, size=(16, 24), mode="bilinear", align_corners=False)[0].softmax(0)
    assert torch.allclose(predict(model, image, (16, 24)), plain, atol=1e-6)
    assert torch.allclose(predict(model, image, (16, 24), InferenceSettings(flip=True)), (plain + flipped) / 2, atol=1e-6)
    both = predict(model, image, (16, 24), InferenceSettings(scales=(0.5, 1.0)))
    assert torch.allclose(both, (half + plain) / 2, atol=1e-6)
    whole_window = predict(model, image, (16, 24), InferenceSettings(mode="slide", crop_size=24, stride=8))
    assert torch.allclose(whole_window, plain, atol=1e-6)
    with torch.no_grad():
        left, right = model(image[None, :, :, :16]).logits[0], model(image[None, :, :, 8:]).logits[0]
    expected = torch.zeros(5, 16, 24)
    expected[:, :, :16] += left
    expected[:, :, 8:] += right
    expected[:, :, 8:16] /= 2
    for window_batch in (1, 8):
        slid = predict(model, image, (16, 24), InferenceSettings(mode="slide", crop_size=16, stride=8, window_batch=window_batch))
        assert torch.allclose(slid, expected.softmax(0), atol=1e-5)


# --- learning the synthetic shapes -------------------------------------------------------------------------------

def _chance_miou(train_masks: np.ndarray, test_masks: list, num_labels: int) -> float:
    """The better of two image-blind predictors: the majority class everywhere, and labels drawn at random with the
    training class frequencies."""
    labelled = train_masks[train_masks != 255]
    frequencies = np.bincount(labelled, minlength=num_labels) / labelled.size
    rng = np.random.default_rng(0)
    majority = [np.full_like(m, frequencies.argmax()) for m in test_masks]
    drawn = [rng.choice(num_labels, size=m.shape, p=frequencies) for m in test_masks]
    metric = load_mean_iou()
    return max(
        metric.compute(predictions=p, references=test_masks, num_labels=num_labels)["mean_iou"] for p in (majority, drawn)
    )


def test_decoder_learns_the_synthetic_shapes_far_above_chance():
    torch.manual_seed(0)
    size, num_labels = 32, len(SHAPES_LABELS)
    train, test = shapes_dataset(64, size, seed=0), shapes_dataset(16, size, seed=1)
    spec = LabelSpec(num_labels)
    train_tf = SegmentationTransform(spec, size, train=True, mean=(0.5,) * 3, std=(0.5,) * 3, jitter=False)
    test_tf = SegmentationTransform(spec, size, train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    pairs = [train_tf(e["image"], e["annotation"], torch.Generator().manual_seed(i)) for i, e in enumerate(train)]
    images, masks = torch.stack([p for p, _ in pairs]), torch.stack([m for _, m in pairs])

    backbone = make_backbone("vit", image_size=32, num_hidden_layers=2)
    segmenter = SegmentationModel(backbone, SegmentationHeadConfig(num_labels=num_labels, aux_blocks=(0,), channels=16))
    model = get_segmentation_peft_model(segmenter, gated_vpt.GatedPromptConfig(num_prompt_tokens=2, gate_init=2.0))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        batch = torch.randint(0, len(images), (8,), generator=generator)
        loss = model(images[batch], labels=masks[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    test_pairs = [test_tf(e["image"], e["annotation"]) for e in test]
    batches = [collate_eval([{"pixel_values": p, "labels": m} for p, m in test_pairs])]
    learned = evaluate_segmentation(model, batches, num_labels, ignore_index=255)["mean_iou"]
    chance = _chance_miou(masks.numpy(), [m.numpy() for _, m in test_pairs], num_labels)
    print(f"synthetic shapes: mIoU {learned:.3f} after 40 steps, chance {chance:.3f}")
    assert learned > chance + 0.2


# --- the model card ----------------------------------------------------------------------------------------------

def test_segmentation_card_has_its_task_metrics_and_a_usage_snippet_that_runs(tmp_path, monkeypatch):
    import re

    from huggingface_hub import ModelCard

    from gated_vpt.card import write_model_card

    base = tmp_path / "base"
    make_backbone("vit_mae").save_pretrained(base)
    model = segmentation_model("vit_mae").eval()
    adapter = save_segmentation_adapter(model, tmp_path / "adapter")
    metrics = {"test_miou": 0.41, "test_pixel_accuracy": 0.75, "test_per_class_iou": [0.4, 0.42]}
    write_model_card(adapter, model, metrics=metrics, base_model=str(base), dataset="scene_parse_150")  # task derived
    text = (adapter / "README.md").read_text()
    data = ModelCard.load(adapter / "README.md").data
    assert data.pipeline_tag == "image-segmentation" and "semantic-segmentation" in data.tags
    assert "image-classification" not in data.tags and data.metrics == ["miou", "pixel_accuracy"]
    assert {(r.task_type, r.metric_type, r.metric_value) for r in data.eval_results} == {
        ("image-segmentation", "miou", 0.41), ("image-segmentation", "pixel_accuracy", 0.75)
    }
    assert "decode and auxiliary heads" in text and "| test_miou | 0.41 |" in text

    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "ViTMAEModel.from_pretrained" in snippet and "mask_ratio=0.0" in snippet
    scope: dict = {}
    monkeypatch.chdir(tmp_path)  # the card names the local base and adapter folders, not their absolute paths
    exec(snippet, scope)
    images = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        assert torch.equal(scope["model"](images).logits, model(images).logits)

    write_model_card(adapter, config=model.peft_config["default"], task="image-classification")
    assert ModelCard.load(adapter / "README.md").data.pipeline_tag == "image-classification"
    with pytest.raises(ValueError, match="task='depth-estimation' is not supported"):
        write_model_card(adapter, model, task="depth-estimation")
