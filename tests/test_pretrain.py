"""examples/pretrain_mae.py's two fixes for the embedded backbone: sin-cos positions on a config-built MAE, and
the head standardisation folded into the final LayerNorm."""

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from conftest import load_example

pretrain = load_example("pretrain_mae")


def _mae():
    torch.manual_seed(0)
    return ViTMAEForPreTraining(ViTMAEConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, decoder_hidden_size=16,
                                             decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                             decoder_intermediate_size=32, mask_ratio=0.0))


def _sin_cos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed positions, from the formula: for the patch at (row, col) of a grid x grid layout (row-major), the
    first half of the channels encodes col and the second half row, each half as [sin(pos * w), cos(pos * w)] with
    w_k = 10000^(-k / (dim / 4)), k = 0 .. dim/4 - 1; the CLS position is zero."""
    omega = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position[:, None].double() * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    rows, cols = torch.arange(grid).repeat_interleave(grid), torch.arange(grid).repeat(grid)
    patches = torch.cat((encode(cols), encode(rows)), dim=1)
    return torch.cat((torch.zeros(1, dim, dtype=torch.float64), patches)).float()


def test_init_sin_cos_gives_encoder_and_decoder_the_2d_sin_cos_formula():
    model = _mae()
    pretrain.init_sin_cos_(model)
    torch.testing.assert_close(model.vit.embeddings.position_embeddings[0], _sin_cos_2d(32, 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.decoder.decoder_pos_embed[0], _sin_cos_2d(16, 4), rtol=0, atol=1e-6)
    assert not model.vit.embeddings.position_embeddings.requires_grad  # fixed, as in MAE


def test_standardise_head_makes_the_mae_head_features_zero_mean_unit_std():
    model = _mae()
    pretrain.init_sin_cos_(model)
    encoder = model.vit
    images = torch.rand(64, 3, 16, 16)
    noise = torch.arange(16.0).expand(64, -1)
    pretrain.standardise_head_(encoder, images, batch_size=20)
    with torch.no_grad():
        pooled = encoder(images, noise=noise, output_hidden_states=True).hidden_states[-1][:, 1:].mean(1)
        features = encoder.layernorm(pooled)
    torch.testing.assert_close(features.mean(0), torch.zeros(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(0), torch.ones(32), atol=1e-3, rtol=0)
