"""Peer benchmark for `persona bench unet` / `persona bench text-encoder`: diffusers / transformers on the same
architecture (random weights), same input sizes, fp32, CPU, best and mean of N timed runs after one warm-up.

    /path/to/venv/bin/python tools/bench/unet.py --part unet --arch sd21-base --size 64 --runs 3
"""
import argparse
import json
import pathlib
import time

import torch
from diffusers import UNet2DConditionModel
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["unet", "text-encoder"], default="unet")
    ap.add_argument("--arch", choices=["sd21-base", "sd15"], default="sd21-base")
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
        else:
            cfg = CLIPTextConfig(**json.loads((cfg_dir / "text_encoder" / "config.json").read_text()))
            model = CLIPTextModel(cfg).eval()
            ids = torch.arange(77).unsqueeze(0).repeat(a.batch, 1)
            best, mean = timed(a.runs, lambda: model(ids))
    print(json.dumps({"part": a.part, "arch": a.arch, "size": a.size, "batch": a.batch,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "best_s": round(best, 3), "mean_s": round(mean, 3)}))


if __name__ == "__main__":
    main()
