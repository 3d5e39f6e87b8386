"""The world's models, in the layouts persona and the reference libraries load: a Stable-Diffusion-architecture
pipeline (diffusers), a CLIP model (transformers) whose text tower is also the pipeline's text encoder (as SD 1.x
conditions on CLIP's), and an identity recogniser (ONNX, ArcFace's input convention).

Sizes are chosen for two CPU cores and the repository's size budget (all models ≤ 15 MB in f16): the 49408-row
token table of the real CLIP tokenizer dominates, so the text width is small."""
import argparse
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

IMAGE = 64          # world images are IMAGE × IMAGE
LATENT = 16         # VAE factor 4
TEXT_WIDTH = 48     # CLIP text tower = the pipeline's text encoder (cross_attention_dim)
UNET_CHANNELS = (32, 64, 96)  # the committed UNet's widths (5.4 MB in f16; `train.py --unet-channels`)
RECOGNIZER_INPUT = 112  # ArcFace's input side; persona resizes the whole image to it (`--detector none`)
EMBEDDING = 128
TOKENIZER = Path(__file__).resolve().parents[2] / "fixtures" / "clip-tokenizer"  # the real CLIP tokenizer's files
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's pixel normalisation, as openai's
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tokenizer():
    from transformers import CLIPTokenizer
    return CLIPTokenizer(str(TOKENIZER / "vocab.json"), str(TOKENIZER / "merges.txt"), model_max_length=77)


def clip_config():
    from transformers import CLIPConfig
    text = dict(vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=4,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                # openai CLIP's legacy ids: pooled at argmax(input_ids), the first <|endoftext|>.
                bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=64)
    vision = dict(image_size=IMAGE, patch_size=8, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                  num_attention_heads=4, hidden_act="quick_gelu", projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), norm_num_groups=16)


def unet(channels=UNET_CHANNELS, groups=32, attend_first=False):
    """SD 2.x's UNet family (linear projections, heads of 32 channels) at three levels; the 8×8 and 4×4 levels and
    the mid block cross-attend to the text. The 16×16 level, where a face is 8 × 9 latent pixels, has no attention
    (SDXL's layout) unless `attend_first` (SD 1.x's and 2.x's: every level but the lowest)."""
    from diffusers import UNet2DConditionModel
    first = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") if attend_first else ("DownBlock2D", "UpBlock2D")
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=(first[0], "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", first[1]),
        block_out_channels=channels, cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=tuple(max(1, c // 32) for c in channels), use_linear_projection=True,
        norm_num_groups=groups)


def unet_widths(text: str) -> tuple:
    """`--unet-channels`: three comma-separated multiples of 32 (GroupNorm's 32 groups, heads of 32 channels)."""
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated integers") from None
    if len(channels) != 3 or any(c <= 0 or c % 32 for c in channels):
        raise argparse.ArgumentTypeError(f"{text!r}: give three positive multiples of 32, e.g. 32,64,96")
    return channels


def grow(saved, fresh):
    """`fresh` (a UNet with more attention blocks) takes every weight of `saved`; each new transformer block's
    output projection starts at zero, so the block adds nothing to its residual and the grown UNet computes
    exactly what the saved one did: training starts from there."""
    state = saved.state_dict()
    missing = fresh.load_state_dict(state, strict=False).missing_keys
    with torch.no_grad():
        for name in {k.rsplit(".proj_out.", 1)[0] for k in missing if ".proj_out." in k}:
            block = fresh.get_submodule(name)
            block.proj_out.weight.zero_()
            block.proj_out.bias.zero_()
    return fresh


def scheduler_config():
    """Stable Diffusion 2.1-base's scheduler (PNDM, sampled with DDIM by persona)."""
    return {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
            "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
            "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None}


class Recognizer(nn.Module):
    """A small CNN identity embedder. Input `[N, 3, 112, 112]`, `(x − 127.5) / 127.5` (ArcFace's convention, so
    persona recognises the kind from the graph); the world's 64-pixel detail is kept by pooling to 56 first."""

    def __init__(self, width=16, dim=EMBEDDING):
        super().__init__()

        def block(i, o, stride):
            return [nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(
            *block(3, w, 1), *block(w, 2 * w, 2),            # 56 → 28
            *block(2 * w, 2 * w, 1), *block(2 * w, 4 * w, 2),  # → 14
            *block(4 * w, 4 * w, 1), *block(4 * w, 4 * w, 2),  # → 7
        )
        # Pooled over the 7×7 map: where the face sits in the frame varies (pose, scale).
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, dim), nn.BatchNorm1d(dim))

    def forward(self, x):
        return self.head(self.body(F.avg_pool2d(x, 2)))


class CosFace(nn.Module):
    """Large-margin cosine classifier over the training identities (the embedding is what is kept)."""

    def __init__(self, dim, classes, scale=30.0, margin=0.3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, emb, labels):
        cos = F.normalize(emb) @ F.normalize(self.weight).t()
        cos = cos - self.margin * F.one_hot(labels, cos.shape[1])
        return F.cross_entropy(self.scale * cos, labels)
