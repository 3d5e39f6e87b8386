"""Peer benchmark for `persona bench train-step`: one textual-inversion step in PyTorch (the diffusers
textual_inversion.py way: only the token-embedding table requires grad), SD architecture with random weights,
fp32 CPU, batch B, latents S×S; forward + backward, best/mean of N runs after one warm-up, peak RSS.
`--method idea` adds ID-EA's Enhancer and Adapter (gate open) between the text encoder and the UNet, as
`persona bench train-step --method idea` does (a Cross Init step is a textual-inversion step plus a norm of two
rows, so `tokens` stands for both).

    /path/to/venv/bin/python tools/bench/train_step.py --arch sd21-base --size 64 --runs 2 [--method idea]
"""
import argparse
import json
import pathlib
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
FACE_DIM, HEADS, BETA, GAMMA = 512, 8, 0.4, 0.5  # ArcFace's width; persona bench's IdeaModules


class Enhancer(nn.Module):
    """ID-EA's ID-Enhancer (shared/spec/methods.md; tools/fixtures/idea_step.py is the parity reference, with a
    64-wide face embedding): fused = W_o MHA(W_q W_a face, W_kv init, W_kv init)."""

    def __init__(self, d):
        super().__init__()
        self.face_proj, self.to_q, self.to_kv = nn.Linear(FACE_DIM, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn, self.to_out = nn.MultiheadAttention(d, HEADS, batch_first=True), nn.Linear(d, 2 * d)

    def forward(self, face, init):
        q = self.to_q(self.face_proj(face[None]))[None].expand(1, init.shape[0], -1)
        kv = self.to_kv(init)[None]
        return self.to_out(self.attn(q, kv, kv, need_weights=False)[0])[0]


class Adapter(nn.Module):
    """ID-EA's ID-Adapter: y' = y + β tanh(γ) MHA([y; W_e fused])[:, :77]."""

    def __init__(self, d):
        super().__init__()
        self.proj, self.attn = nn.Linear(2 * d, d), nn.MultiheadAttention(d, HEADS, batch_first=True)
        self.gamma = nn.Parameter(torch.full((1,), GAMMA))

    def forward(self, y, fused):
        x = torch.cat([y, self.proj(fused)[None].expand(y.shape[0], -1, -1)], dim=1)
        return y + BETA * torch.tanh(self.gamma) * self.attn(x, x, x, need_weights=False)[0][:, : y.shape[1]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["sd21-base", "sd15"], default="sd21-base")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--method", choices=["tokens", "idea"], default="tokens")
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
    d = te.config.hidden_size
    idea = (Enhancer(d), Adapter(d), torch.randn(FACE_DIM), torch.randn(2, d)) if a.method == "idea" else None

    def step():
        cond = te(ids)[0]
        if idea:
            enhancer, adapter, face, init = idea
            cond = adapter(cond, enhancer(face, init))
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
    print(json.dumps({"part": "train-step", "method": a.method, "arch": a.arch, "size": a.size, "batch": a.batch,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "best_s": round(min(times), 3), "mean_s": round(sum(times) / len(times), 3),
                      "peak_rss_gb": round(peak, 2)}))


if __name__ == "__main__":
    main()
