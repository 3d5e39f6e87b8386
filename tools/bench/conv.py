"""Peer benchmark for `persona bench conv`: PyTorch's 3×3 stride-1 convolution (`F.conv2d`, oneDNN on the CPU)
and its input gradient (`torch.nn.grad.conv2d_input`) on the same shapes, fp32, in GFLOP/s, best of N runs
after one warm-up; one JSON line per shape.

    /path/to/venv/bin/python tools/bench/conv.py [--runs 5]
"""
import argparse
import json

import torch
import torch.nn.functional as F

from unet import timed  # this folder's peer scripts share one timing loop

# (channels, side, batch), as in crates/persona-cli/src/bench/conv.rs
SHAPES = [(320, 64, 1), (320, 64, 2), (640, 32, 2), (1280, 16, 2), (1280, 8, 2), (128, 256, 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    with torch.no_grad():
        for c, s, b in SHAPES:
            x, w = torch.randn(b, c, s, s), torch.randn(c, c, 3, 3) * 0.02
            gflop = 2 * b * c * c * 9 * s * s / 1e9
            fwd = timed(a.runs, lambda: F.conv2d(x, w, padding=1))[0]
            grad = timed(a.runs, lambda: torch.nn.grad.conv2d_input(x.shape, w, x, padding=1))[0]
            print(json.dumps({"part": "Conv", "channels": c, "side": s, "batch": b,
                              "forward_gflops": round(gflop / fwd), "input_grad_gflops": round(gflop / grad),
                              "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
