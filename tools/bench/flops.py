"""How far each benchmarked phase is from this CPU's limit: the matrix and convolution FLOPs of the phase
(PyTorch's `FlopCounterMode`, which counts matmuls, convolutions and attention, forward and backward) over
the FLOP/s of one large matrix product on the same threads. Same configurations as `unet.py` and
`train_step.py` (SD 2.1-base architecture, random weights, fp32, 64×64 latents).

    /path/to/venv/bin/python tools/bench/flops.py            # one JSON line per phase, then the peak

The phase's FLOPs divided by the peak is the least time it could take here; docs/performance.md sets each
side's measured time beside it.
"""
import json
import pathlib
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

CFG = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "manifests" / "sd21-base"


def config(name):
    return json.loads((CFG / name / "config.json").read_text())


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak(side=2048, runs=5) -> float:
    """GFLOP/s of one `side`³ f32 matrix product, best of `runs`."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(runs))
    return 2 * side ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config("unet")).eval().requires_grad_(False)
    vae = AutoencoderKL.from_config(config("vae")).eval().requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(**config("text_encoder"))).eval().requires_grad_(False)
    t = torch.tensor([500.0])
    phases = {}
    with torch.no_grad():
        phases["text encoder, batch 2"] = count(lambda: text(torch.arange(77).repeat(2, 1)))
        for b in (1, 2):
            x, c = torch.randn(b, 4, 64, 64), torch.randn(b, 77, unet.config.cross_attention_dim)
            phases[f"UNet forward, batch {b}"] = count(lambda: unet(x, t, c))
        phases["VAE encode, 512²"] = count(lambda: vae.encode(torch.randn(1, 3, 512, 512)).latent_dist)
        phases["VAE decode, 512²"] = count(lambda: vae.decode(torch.randn(1, 4, 64, 64)).sample)

    def step(b):
        # A textual-inversion step's UNet part: forward, and backward to the condition only (frozen weights).
        c = torch.randn(b, 77, unet.config.cross_attention_dim, requires_grad=True)
        unet(torch.randn(b, 4, 64, 64), t, c).sample.pow(2).mean().backward()

    for b in (1, 2):
        phases[f"training step (UNet forward + backward), batch {b}"] = count(lambda: step(b))
    for name, flops in phases.items():
        print(json.dumps({"phase": name, "gflop": round(flops / 1e9, 1)}))
    print(json.dumps({"peak_gflops": round(peak(), 1), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
