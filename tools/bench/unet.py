"""Peer benchmark for `persona bench unet | text-encoder | vae-encode | vae-decode | generate`: diffusers /
transformers on the same architecture (random weights), same input sizes, fp32, CPU, best and mean of N timed runs
after one warm-up.

    /path/to/venv/bin/python tools/bench/unet.py --part unet --arch sd21-base --size 64 --runs 3
    /path/to/venv/bin/python tools/bench/unet.py --part generate --steps 10 --runs 2   # StableDiffusionPipeline
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parents[2]


def timed(runs, fn):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), sum(times) / len(times)


def generate(a):
    """`persona bench generate`'s peer: StableDiffusionPipeline with DDIM, guidance 7.5, one 512² image
    (`output_type="np"`), the models built as `diffusers_gpu.py` builds them."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import diffusers_gpu as peer
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    cfg = peer.configs(tiny=False)
    cfg["unet"]["sample_size"] = a.size
    with tempfile.TemporaryDirectory() as tmp:
        m = peer.build(cfg, pathlib.Path(tmp))
    pipe = StableDiffusionPipeline(vae=m["vae"], text_encoder=m["text_encoder"], tokenizer=m["tokenizer"],
                                   unet=m["unet"], scheduler=DDIMScheduler.from_config(cfg["scheduler"]),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    side = a.size * 8
    return timed(a.runs, lambda: pipe(peer.PROMPT, num_inference_steps=a.steps, guidance_scale=7.5, height=side,
                                      width=side, output_type="np").images)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["unet", "text-encoder", "vae-encode", "vae-decode", "generate"],
                    default="unet")
    ap.add_argument("--arch", choices=["sd21-base", "sd15"], default="sd21-base")
    ap.add_argument("--steps", type=int, default=50, help="generate: DDIM steps (guidance 7.5, one image)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg_dir = ROOT / "fixtures" / "manifests" / a.arch
    with torch.no_grad():
        if a.part == "unet":
            model = UNet2DConditionModel.from_config(json.loads((cfg_dir / "unet" / "config.json").read_text())).eval()
            x = torch.randn(a.batch, 4, a.size, a.size)
            cond = torch.randn(a.batch, 77, model.config.cross_attention_dim)
            t = torch.tensor([500.0])
            best, mean = timed(a.runs, lambda: model(x, t, cond))
        elif a.part == "text-encoder":
            cfg = CLIPTextConfig(**json.loads((cfg_dir / "text_encoder" / "config.json").read_text()))
            model = CLIPTextModel(cfg).eval()
            ids = torch.arange(77).unsqueeze(0).repeat(a.batch, 1)
            best, mean = timed(a.runs, lambda: model(ids))
        elif a.part in ("vae-encode", "vae-decode"):
            vae = AutoencoderKL.from_config(json.loads((cfg_dir / "vae" / "config.json").read_text())).eval()
            f = 2 ** (len(vae.config.block_out_channels) - 1)
            if a.part == "vae-encode":
                x = torch.randn(a.batch, 3, a.size * f, a.size * f)
                best, mean = timed(a.runs, lambda: vae.encode(x).latent_dist)
            else:
                z = torch.randn(a.batch, 4, a.size, a.size)
                best, mean = timed(a.runs, lambda: vae.decode(z).sample)
        else:
            best, mean = generate(a)
    print(json.dumps({"part": a.part, "arch": a.arch, "size": a.size, "batch": a.batch,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "best_s": round(best, 3), "mean_s": round(mean, 3)}))


if __name__ == "__main__":
    main()
