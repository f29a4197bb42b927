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


def test_init_sin_cos_gives_encoder_and_decoder_their_fixed_positions():
    model = _mae()
    pretrain.init_sin_cos_(model)
    positions = model.vit.embeddings.position_embeddings[0, 1:]
    assert positions.abs().sum() > 0 and model.decoder.decoder_pos_embed.abs().sum() > 0
    # 2D sin-cos: every patch position is distinct, and the values are sines and cosines
    assert torch.unique(positions, dim=0).shape[0] == 16
    assert positions.abs().max() <= 1.0 + 1e-6


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
