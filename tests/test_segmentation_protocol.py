"""Segmentation's training and evaluation protocol (SETR / mmsegmentation's ADE20K pipeline) pinned against
independent computations: the mIoU's definition, the ignore index in padding and in rescaled masks, the
sliding-window positions, the test-time rescale into the (4 x crop, crop) box and the multi-scale sizes.
tests/test_segmentation.py covers the heads, the model and the rest of the data handling."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from gated_vpt.segmentation.data import LabelSpec, SegmentationTransform
from gated_vpt.segmentation.inference import InferenceSettings, _window_starts, predict
from gated_vpt.segmentation.metrics import load_mean_iou
from gated_vpt.segmentation.metrics.mean_iou import area_totals, scores_from_totals


def test_a_class_predicted_but_never_labelled_counts_with_iou_0():
    """mmsegmentation's (and the Hub's) mIoU: a class with a non-empty union counts, so predicting a class that
    no pixel carries costs; only classes in neither the labels nor the predictions are left out (NaN)."""
    reference = np.array([[0, 0], [0, 255]])
    prediction = np.array([[0, 1], [0, 2]])  # class 2 only where the label is ignored: it does not count
    scores = scores_from_totals(area_totals(prediction, reference, 3, 255))
    assert scores["per_category_iou"][:2] == [2 / 3, 0.0] and np.isnan(scores["per_category_iou"][2])
    assert scores["mean_iou"] == pytest.approx(1 / 3)
    assert scores["overall_accuracy"] == pytest.approx(2 / 3)
    hub_style = load_mean_iou().compute(predictions=[prediction], references=[reference], num_labels=3, ignore_index=255)
    assert hub_style["mean_iou"] == pytest.approx(1 / 3)


def _mmseg_rescale(height: int, width: int, long_side: float, short_side: float) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the factor that fits both sides into the box, sizes rounded half up."""
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


@pytest.mark.parametrize("height, width", [(40, 60), (60, 40), (10, 200), (33, 33)])
def test_the_test_image_is_rescaled_into_the_box_and_the_mask_keeps_its_size(height, width):
    crop = 32
    transform = SegmentationTransform(LabelSpec(4), crop_size=crop, train=False, mean=(0, 0, 0), std=(1, 1, 1))
    image = PILImage.fromarray(np.full((height, width, 3), 100, dtype=np.uint8))
    mask = PILImage.fromarray(np.zeros((height, width), dtype=np.uint8))
    pixels, labels = transform(image, mask)
    assert tuple(pixels.shape[-2:]) == _mmseg_rescale(height, width, 4 * crop, crop)
    assert tuple(labels.shape) == (height, width)


def test_padding_and_rescaled_masks_carry_the_ignore_index_only_where_no_label_is():
    """A training crop smaller than the crop size is padded: the image with 0 after normalisation, the mask with
    the ignore index (a padded pixel trained as class 0 would teach the model to find class 0 at image borders).
    Rescaling the mask picks nearest labels: no value that is neither a class nor the ignore index appears."""
    labels = np.zeros((10, 12), dtype=np.uint8)
    labels[:, 6:] = 3
    labels[:3, :3] = 255
    image = PILImage.fromarray(np.full((10, 12, 3), 200, dtype=np.uint8))
    transform = SegmentationTransform(LabelSpec(4), crop_size=32, train=True, mean=(0.1, 0.2, 0.3),
                                      std=(0.5, 0.5, 0.5), scale_range=(0.5, 0.5), jitter=False)
    height, width = _mmseg_rescale(10, 12, 64, 16)  # the box (4 x 32, 32) at ratio 0.5
    for seed in range(3):
        pixels, mask = transform(image, PILImage.fromarray(labels), torch.Generator().manual_seed(seed))
        assert pixels.shape == (3, 32, 32) and mask.shape == (32, 32)
        padded = torch.ones(32, 32, dtype=torch.bool)
        padded[:height, :width] = False
        assert (mask[padded] == 255).all() and (pixels[:, padded] == 0).all()
        assert set(mask[~padded].unique().tolist()) == {0, 3, 255}
        assert ((pixels[:, ~padded] * 127.5 + torch.tensor([25.5, 51.0, 76.5]).view(3, 1) - 200).abs() < 1e-3).all()


def test_the_crop_rule_counts_labelled_pixels_only():
    """mmsegmentation's random crop retries (up to 10 times) until no class covers 75 % of the crop's labelled
    pixels; ignored pixels are no class. Here a third of the image is ignored next to a band of class 0, so crops
    there hold one class (rejected) but would pass if the ignore index counted as a class."""
    labels = np.zeros((32, 128), dtype=np.uint8)
    labels[:, :24] = 255
    labels[16:, 40:] = 1  # from column 40 on: class 0 above, class 1 below
    image = PILImage.fromarray(np.zeros((32, 128, 3), dtype=np.uint8))
    transform = SegmentationTransform(LabelSpec(2), crop_size=32, train=True, mean=(0, 0, 0), std=(1, 1, 1),
                                      scale_range=(1.0, 1.0), jitter=False)
    for seed in range(10):
        _, mask = transform(image, PILImage.fromarray(labels), torch.Generator().manual_seed(seed))
        counts = np.bincount(mask[mask != 255].numpy(), minlength=2)
        assert (counts > 0).all() and counts.max() / counts.sum() < 0.75, (seed, counts)


def _mmseg_window_starts(length: int, crop: int, stride: int) -> list[int]:
    """mmsegmentation's slide_inference along one side: grids from the stride, the last window moved back inside."""
    grids = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + crop, length) - crop, 0) for i in range(grids)})


@pytest.mark.parametrize("length, crop, stride", [(100, 32, 21), (683, 512, 341), (1366, 512, 341), (40, 32, 8), (20, 32, 21)])
def test_sliding_windows_sit_where_mmsegmentation_puts_them(length, crop, stride):
    assert _window_starts(length, crop, stride) == _mmseg_window_starts(length, crop, stride)


class _SizeRecorder(torch.nn.Module):
    """A stand-in segmentation model: logits that depend on the position only, and the input sizes it saw."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, pixel_values):
        self.sizes.append(tuple(pixel_values.shape[-2:]))
        height, width = pixel_values.shape[-2:]
        ramp = torch.linspace(-1, 1, width).expand(len(pixel_values), 1, height, width)
        return SimpleNamespace(logits=torch.cat((ramp, -ramp), dim=1))


def test_test_scales_resize_the_image_by_each_ratio_and_score_at_the_masks_size():
    model = _SizeRecorder()
    image = torch.randn(3, 30, 45)
    scales = (0.5, 0.75, 1.0, 1.75)
    probabilities = predict(model, image, (37, 52), InferenceSettings(scales=scales, flip=True))
    expected = [_mmseg_rescale(30, 45, 45 * s, 30 * s) for s in scales]
    assert model.sizes == [size for size in expected for _ in range(2)]  # each scale, then its flipped view
    assert probabilities.shape == (2, 37, 52)
    # the stand-in favours class 0 on the right of whatever it sees; each flipped view's logits are flipped back,
    # so the two views cancel exactly
    torch.testing.assert_close(probabilities, torch.full((2, 37, 52), 0.5))
    unflipped = predict(model, image, (37, 52), InferenceSettings(scales=scales))
    assert (unflipped[0, :, -5:] > 0.6).all() and (unflipped[0, :, :5] < 0.4).all()
