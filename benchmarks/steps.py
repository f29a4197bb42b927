"""One configuration's training step and inference batch, as every benchmark runs them."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.nn import functional as F

import gated_vpt

from .measure import live_bytes, model_state_tensors, transient_peak_bytes
from .setups import SIZES, Setup, logits_of


def random_batch(size: str, batch: int, device: torch.device, num_labels: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of images and labels for a ``size`` backbone."""
    image_size = SIZES[size]["image_size"]
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, num_labels, (batch,), generator=generator).to(device)
    return pixel_values, labels


class Runner:
    """One configuration's training step and inference batch on a fixed random batch."""

    def __init__(self, setup: Setup, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        self.setup = setup
        self.pixel_values = pixel_values
        self.labels = labels
        self.optimizer = torch.optim.SGD(setup.trainable(), lr=1e-4, momentum=0.9)

    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with gated_vpt.fast_path(self.setup.fast_path):
            loss = F.cross_entropy(logits_of(self.setup.model(self.pixel_values)), self.labels)
            loss.backward()
        self.optimizer.step()

    def inference(self, adapter_names: Optional[list[str]] = None) -> None:
        with torch.inference_mode(), gated_vpt.fast_path(self.setup.fast_path):
            kwargs = {} if adapter_names is None else {"adapter_names": adapter_names}
            self.setup.model(self.pixel_values, **kwargs)

    def init_optimizer_state(self) -> None:
        """Create the SGD momentum buffers a first step would create, so one measured step sees steady state."""
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                self.optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)

    def prepare(self, attention: str, training: bool) -> None:
        self.setup.set_attention(attention)
        self.setup.model.train(training)

    def peak_bytes(self, fn: Callable[[], None], device: torch.device) -> int:
        self.optimizer.zero_grad(set_to_none=True)
        start = live_bytes(model_state_tensors(self.setup.model, self.optimizer) + [self.pixel_values, self.labels])
        return start + transient_peak_bytes(fn, device)
