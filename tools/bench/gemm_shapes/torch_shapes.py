"""PyTorch (MKL) on gemm_shapes' shapes (src/main.rs's SHAPES), and F.conv2d 3x3 at SD's 64², 32², 16² levels;
2 threads, best of five 0.3 s loops, as the Rust side times them."""
import time

import torch

SHAPES = [("linear 64² qkv", 4096, 320, 320), ("ff in 64²", 4096, 2560, 320), ("ff out 64²", 4096, 320, 1280),
          ("conv tap 64²", 320, 4224, 320), ("conv tap 32²", 640, 1088, 640), ("conv tap 16²", 1280, 288, 1280),
          ("attn qk 64²", 4096, 4096, 64), ("attn pv 64²", 4096, 64, 4096), ("conv im2col 64²", 320, 4096, 2880),
          ("square 2048³ (peak)", 2048, 2048, 2048)]
CONVS = [("conv3x3 64²", 320, 64), ("conv3x3 32²", 640, 32), ("conv3x3 16²", 1280, 16)]


def best_seconds(f):
    f()
    best = float("inf")
    for _ in range(5):
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 0.3:
            f()
            n += 1
        best = min(best, (time.perf_counter() - start) / n)
    return best


torch.set_num_threads(2)
for name, m, n, k in SHAPES:
    a, b, c = torch.rand(m, k), torch.rand(k, n), torch.empty(m, n)
    print(f"{name:18} torch {2 * m * n * k / best_seconds(lambda: torch.mm(a, b, out=c)) / 1e9:6.1f}")
for name, ch, hw in CONVS:
    x, w = torch.rand(1, ch, hw, hw), torch.rand(ch, ch, 3, 3)
    s = best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1))
    print(f"{name:18} torch conv {2 * ch * ch * 9 * hw * hw / s / 1e9:6.1f}")
