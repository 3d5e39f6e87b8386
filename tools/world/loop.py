"""The pieces every training stage of train.py shares: learning-rate schedule, image sets on the training
device, stage lengths under a time budget, autocast, and the run record (`training.json`)."""
import contextlib
import fcntl
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

CALIBRATE = 40  # steps timed before a budgeted stage fixes its length (all warm-ups are longer)


def cosine_lr(step, total, base, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def to_float(images_u8):
    """uint8 [N, H, W, 3] (numpy or torch) → float [N, 3, H, W] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)) if isinstance(images_u8, np.ndarray) else images_u8
    return x.permute(0, 3, 1, 2).float() / 255.0


class Images:
    """A rendered image set, on the training device when that is a GPU (the whole set fits in its memory, and
    batches then never cross the bus), else memory-mapped."""

    def __init__(self, path: Path, device):
        self.device = device
        data = np.load(path, mmap_mode="r")
        self.data = torch.from_numpy(np.ascontiguousarray(data)).to(device) if device.type == "cuda" else data

    def __len__(self):
        return len(self.data)

    def batch(self, idx):
        """Images `idx` (a sorted CPU index tensor) as float [N, 3, H, W] in [0, 1] on the device."""
        if self.device.type == "cuda":
            return to_float(self.data[idx.to(self.device)])
        return to_float(self.data[idx.numpy()])


class Steps:
    """How long a training stage runs: its step count, or, under a time budget, as many steps as fit in it,
    timed over steps 10..CALIBRATE (the first ones pay for warm-up and kernel selection). Learning-rate
    warm-ups are longer than CALIBRATE steps, so the schedule before the length is fixed does not depend on it."""

    def __init__(self, steps: int, budget_s: float | None, device):
        self.total, self.budget, self.device, self.start, self.mark = steps, budget_s, device, time.time(), None

    def _now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.time()

    def done(self, step: int) -> bool:
        if self.budget and step == 10:
            self.mark = self._now()
        if self.budget and step == CALIBRATE:
            now = self._now()
            per_step = (now - self.mark) / (CALIBRATE - 10)
            self.total = min(self.total, CALIBRATE + int((self.budget - (now - self.start)) / per_step))
        return step >= self.total


def amp(a):
    """bf16 autocast on a GPU (or with `--amp` on the CPU, to try that path here); f32 otherwise."""
    if a.amp:
        return torch.autocast(a.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def random_batch(gen, n: int, batch: int):
    return torch.sort(torch.randint(n, (batch,), generator=gen)).values


def log(stage, **values):
    """Prints a progress line and appends it to the run record."""
    print(f"[{stage}] " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()),
          flush=True)


def record(out: Path, stage: str, **values):
    """Adds a stage's figures to `training.json` (locked: the GPU profile trains three stages at once)."""
    path = out / "training.json"
    with open(out / ".training.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[stage] = values
        path.write_text(json.dumps(data, indent=2) + "\n")


def previous_rounds(out: Path, stage: str, first_lr: float) -> list:
    """The rounds a stage has already recorded in `training.json` (a first run records itself as one)."""
    path = out / "training.json"
    done = json.loads(path.read_text()).get(stage, {}) if path.exists() else {}
    if not done:
        return []
    return done.get("rounds") or [{k: done[k] for k in ("minutes", "final_loss", "steps", "batch")} | {"lr": first_lr}]
