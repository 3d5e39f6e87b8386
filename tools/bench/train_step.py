"""Peer benchmark for `persona bench train-step`: one textual-inversion step in PyTorch (the diffusers
textual_inversion.py way: only the token-embedding table requires grad), SD architecture with random weights,
fp32 CPU, batch B, latents S×S; forward + backward, best/mean of N runs after one warm-up, peak RSS.

    /path/to/venv/bin/python tools/bench/train_step.py --arch sd21-base --size 64 --runs 2
"""
import argparse
import json
import pathlib
import resource
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["sd21-base", "sd15"], default="sd21-base")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = ROOT / "fixtures" / "manifests" / a.arch
    te = CLIPTextModel(CLIPTextConfig(**json.loads((cfg / "text_encoder" / "config.json").read_text())))
    unet = UNet2DConditionModel.from_config(json.loads((cfg / "unet" / "config.json").read_text()))
    for p in list(te.parameters()) + list(unet.parameters()):
        p.requires_grad_(False)
    te.get_input_embeddings().weight.requires_grad_(True)
    ids = torch.arange(77).unsqueeze(0).repeat(a.batch, 1)
    x = torch.randn(a.batch, 4, a.size, a.size)
    target = torch.randn_like(x)
    t = torch.tensor([500])

    def step():
        cond = te(ids)[0]
        loss = F.mse_loss(unet(x, t, cond).sample, target)
        loss.backward()
        te.get_input_embeddings().weight.grad = None

    step()
    times = []
    for _ in range(a.runs):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"part": "train-step", "arch": a.arch, "size": a.size, "batch": a.batch,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "best_s": round(min(times), 3), "mean_s": round(sum(times) / len(times), 3),
                      "peak_rss_gb": round(peak, 2)}))


if __name__ == "__main__":
    main()
