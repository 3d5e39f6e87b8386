"""Trains the world's models from scratch and writes them where persona loads them (`world/`).

    python tools/world/train.py all            # every stage in order (80 minutes on 2 CPU cores, one UNet round)
    python tools/world/train.py STAGE [...]    # data | recognizer | clip | vae | encode | unet | assemble | samples
                                               # (resume: the work folder's models from an assembled world)
    tools/world/gpu.sh                         # the GPU profile: every stage in about 8 minutes on one H200

Each stage reads the previous stages' outputs from the work folder (`--work`, default /tmp/persona-world) and is
deterministic for its seed. The pinned reference stack (tools/fixtures/requirements.txt) plus `onnx` (for the
recogniser's export) is all it needs. Timings and final losses go to `world/training.json`."""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
import world  # noqa: E402
from assemble import stage_assemble, stage_resume, stage_samples  # noqa: E402
from loop import (Images, Steps, amp, cosine_lr, log, previous_rounds, random_batch, record, set_lr,  # noqa: E402
                  to_float)
from names import NameTerm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORLD_PY = Path(__file__).resolve().parent / "world.py"

# Stage sizes: the CPU profile is what fits this machine's 2 cores; the GPU profile trains on four times the data,
# with larger batches, each training stage for a wall-clock budget (`--budget`) rather than a step count.
SIZES = dict(sd_images=60000, recognizer_per_person=40, recognizer_epochs=4, clip_steps=1500, clip_batch=128,
             vae_steps=5000, vae_batch=16, unet_steps=6000, unet_batch=32, unet_lr=4e-4)
GPU_SIZES = dict(sd_images=240000, recognizer_per_person=60, recognizer_epochs=12, clip_steps=200000,
                 clip_batch=512, vae_steps=200000, vae_batch=128, unet_steps=200000, unet_batch=256, unet_lr=8e-4)


# ---------------------------------------------------------------- data


def stage_data(a):
    """Renders the training sets with the world renderer, on every core."""
    w = max(1, a.workers - 2)
    render = [sys.executable, str(WORLD_PY)]
    world_args = ["--revision", str(a.revision)]
    jobs = [
        render + ["dataset", "--n", str(a.sizes["sd_images"]), "--seed", "0", "--out", str(a.work / "sd"),
                  "--workers", str(w)] + world_args,
        render + ["recognizer-data", "--per-person", str(a.sizes["recognizer_per_person"]),
                  "--out", str(a.work / "recognizer"), "--workers", str(max(1, a.workers - w))] + world_args,
    ]
    procs = [subprocess.Popen(j) for j in jobs]
    if any(p.wait() for p in procs):
        raise SystemExit("rendering failed")
    subprocess.run(render + ["people", "--out", str(a.out / "people")] + world_args, check=True)
    record(a.out, "data", revision=a.revision, images=a.sizes["sd_images"],
           recognizer_per_person=a.sizes["recognizer_per_person"])


# ---------------------------------------------------------------- recogniser


def recognizer_batch(x, train):
    """The input persona gives the recogniser: the 64-pixel image (float [N, 3, H, W] in [0, 1]) resized to 112,
    (x − 127.5) / 127.5; training jitters scale and position a little (persona's resize filter differs from
    this one)."""
    n = x.shape[0]
    if train:
        scale = 1 + (torch.rand(n, device=x.device) - 0.5) * 0.12
        shift = (torch.rand(n, 2, device=x.device) - 0.5) * 0.08
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, (n, 3, models.RECOGNIZER_INPUT, models.RECOGNIZER_INPUT), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    else:
        x = F.interpolate(x, size=models.RECOGNIZER_INPUT, mode="bilinear", align_corners=False)
    return x * 2 - 1


def held_out_verification(net, people_dir: Path, device):
    """Same-person vs different-person cosine on the held-out people (never trained on)."""
    from PIL import Image
    files = [(i, f) for i, d in enumerate(sorted(p for p in people_dir.iterdir() if p.is_dir()))
             for f in sorted(d.glob("*.png"))]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for _, f in files])
    with torch.no_grad():
        e = F.normalize(net(recognizer_batch(to_float(images).to(device), False))).float().cpu()
    who = torch.tensor([i for i, _ in files])
    sim = e @ e.t()
    same = (who[:, None] == who[None]) & ~torch.eye(len(who), dtype=torch.bool)
    diff = who[:, None] != who[None]
    # rank-1: the most similar other photo is the same person
    masked = sim - 2 * torch.eye(len(who))
    rank1 = (who[masked.argmax(1)] == who).float().mean().item()
    return sim[same].mean().item(), sim[diff].mean().item(), rank1


def stage_recognizer(a):
    torch.manual_seed(1)
    data = a.work / "recognizer"
    images = Images(data / "images.npy", a.device)
    labels = torch.from_numpy(np.load(data / "labels.npy")).long()
    classes = int(labels.max()) + 1
    net, head = models.Recognizer().to(a.device), models.CosFace(models.EMBEDDING, classes).to(a.device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=5e-4)
    batch, epochs = 128 * a.batch_scale, a.sizes["recognizer_epochs"]
    per_epoch = len(labels) // batch
    steps = Steps(epochs * per_epoch, a.budget.get("recognizer"), a.device)
    step, start = 0, time.time()
    while not steps.done(step):
        if step % per_epoch == 0:
            net.train()
            order = torch.randperm(len(labels))
        idx = torch.sort(order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]).values
        set_lr(opt, cosine_lr(step, steps.total, 2e-3, 100))
        with amp(a):
            loss = head(net(recognizer_batch(images.batch(idx), True)).float(), labels[idx].to(a.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % per_epoch == 0 or steps.done(step):
            net.eval()
            same, diff, rank1 = held_out_verification(net, a.out / "people", a.device)
            log("recognizer", epoch=step / per_epoch, loss=loss.item(), same=same, different=diff, rank1=rank1,
                minutes=(time.time() - start) / 60)
    out = a.out / "faces"
    out.mkdir(parents=True, exist_ok=True)
    net = net.cpu().float().eval()
    torch.onnx.export(net, (torch.zeros(1, 3, models.RECOGNIZER_INPUT, models.RECOGNIZER_INPUT),),
                      str(out / "recognizer.onnx"), dynamo=False, input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17)
    record(a.out, "recognizer", minutes=(time.time() - start) / 60, final_loss=loss.item(), held_out_same=same,
           held_out_different=diff, held_out_rank1=rank1, steps=step, batch=batch, classes=classes)


# ---------------------------------------------------------------- CLIP


def clip_pixels(x):
    """float [N, 3, H, W] in [0, 1] → CLIP's normalised pixels."""
    mean = torch.tensor(models.CLIP_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(models.CLIP_STD, device=x.device)[:, None, None]
    return (x - mean) / std


def stage_clip(a):
    from transformers import CLIPModel
    torch.manual_seed(2)
    data = a.work / "sd"
    images = Images(data / "images.npy", a.device)
    captions = json.loads((data / "captions.json").read_text())
    tok = models.tokenizer()
    if a.continue_clip:
        model = CLIPModel.from_pretrained(a.work / "clip-f32").to(a.device)
    else:
        model = CLIPModel(models.clip_config()).to(a.device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    names = None
    if a.name_weight:
        identities = json.loads((data / "ids.json").read_text())
        anchors = torch.load(a.name_anchors) if a.name_anchors else None
        names = NameTerm(tok, json.loads((data / "names.json").read_text()), model.config.text_config.hidden_size,
                         anchors)
        other += list(names.to(a.device).parameters())
    lr = 1e-3 * (0.3 if a.continue_clip else 1.0)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    batch = a.sizes["clip_batch"]
    steps = Steps(a.sizes["clip_steps"], a.budget.get("clip"), a.device)
    gen = torch.Generator().manual_seed(2)
    start, step = time.time(), 0
    while not steps.done(step):
        idx = random_batch(gen, len(captions), batch)
        ids = tok([captions[i] for i in idx.tolist()], padding=True, truncation=True, max_length=77,
                  return_tensors="pt").to(a.device)
        set_lr(opt, cosine_lr(step, steps.total, lr, 200 // (4 if a.continue_clip else 1)))
        with amp(a):
            out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
                        pixel_values=clip_pixels(images.batch(idx)), return_loss=True)
            name_loss = names(out.text_model_output.last_hidden_state, ids.input_ids,
                              [identities[i] for i in idx.tolist()]) if names else torch.zeros(())
        opt.zero_grad()
        (out.loss + a.name_weight * name_loss).backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0:
            log("clip", step=step, loss=out.loss.item(), name_loss=name_loss.item(),
                minutes=(time.time() - start) / 60)
        step += 1
    log("clip", step=step, loss=out.loss.item(), name_loss=name_loss.item(), minutes=(time.time() - start) / 60)
    model.float().cpu().save_pretrained(a.work / "clip-f32", safe_serialization=True)
    rounds = (previous_rounds(a.out, "clip", 1e-3) if a.continue_clip else []) + [
        dict(minutes=(time.time() - start) / 60, final_loss=out.loss.item(), steps=step, batch=batch, lr=lr,
             name_weight=a.name_weight, name_loss=name_loss.item())]
    record(a.out, "clip", minutes=sum(r["minutes"] for r in rounds), final_loss=out.loss.item(),
           steps=sum(r["steps"] for r in rounds), batch=batch, rounds=rounds)


# ---------------------------------------------------------------- VAE


def stage_vae(a):
    """The VAE is fully convolutional (its mid-block attention takes any size), so on the CPU most steps train on
    random 32² crops, four times cheaper than whole images; the last tenth (every step on a GPU) trains on whole
    64² images."""
    torch.manual_seed(3)
    images = Images(a.work / "sd" / "images.npy", a.device)
    vae = models.vae().to(a.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    batch = a.sizes["vae_batch"]
    steps = Steps(a.sizes["vae_steps"], a.budget.get("vae"), a.device)
    gen = torch.Generator().manual_seed(3)
    start, step = time.time(), 0
    while not steps.done(step):
        x = images.batch(random_batch(gen, len(images), batch)) * 2 - 1
        if a.device.type == "cpu" and step < steps.total * 9 // 10:
            top, left = (int(v) // 4 * 4 for v in torch.randint(0, models.IMAGE - 32, (2,), generator=gen))
            x = x[:, :, top:top + 32, left:left + 32]
        set_lr(opt, cosine_lr(step, steps.total, 2e-3, 100))
        with amp(a):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample.float()
        # L1 keeps the flat colours and edges sharp; the KL term only keeps the latent scale in check.
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * post.kl().float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            log("vae", step=step, loss=loss.item(), minutes=(time.time() - start) / 60)
        step += 1
    error = reconstruction_error(vae, images, a)
    log("vae", step=step, loss=loss.item(), error_255=error, minutes=(time.time() - start) / 60)
    vae.float().cpu().save_pretrained(a.work / "vae-f32", safe_serialization=True)
    record(a.out, "vae", minutes=(time.time() - start) / 60, final_loss=loss.item(), steps=step, batch=batch,
           reconstruction_error_255=error)


def reconstruction_error(vae, images, a, n=512):
    """Mean absolute error per pixel, in 0..255 units, of the posterior mean's reconstruction of n images."""
    vae.eval()
    with torch.no_grad():
        x = images.batch(torch.arange(n)) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    vae.train()
    return ((rec - x).abs().mean() * 127.5).item()


# ---------------------------------------------------------------- encodings for the UNet


def stage_encode(a):
    """Latents of every training image (posterior mean and std) and the frozen text tower's condition of every
    caption, computed once: the UNet stage then runs the UNet only."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel
    data = a.work / "sd"
    images = Images(data / "images.npy", a.device)
    captions = json.loads((data / "captions.json").read_text())
    vae = AutoencoderKL.from_pretrained(a.work / "vae-f32").to(a.device).eval()
    text = CLIPTextModel.from_pretrained(a.work / "clip-f32").to(a.device).eval()
    tok = models.tokenizer()
    means, stds, conds = [], [], []
    start, chunk = time.time(), 256 * a.batch_scale
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            idx = torch.arange(i, min(i + chunk, len(images)))
            post = vae.encode(images.batch(idx) * 2 - 1).latent_dist
            means.append(post.mean.half().cpu())
            stds.append(post.std.half().cpu())
            ids = tok(captions[i:i + chunk], padding="max_length", truncation=True, max_length=77,
                      return_tensors="pt").input_ids.to(a.device)
            conds.append(text(ids).last_hidden_state.half().cpu())
        empty = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(a.device)
        empty = text(empty).last_hidden_state.cpu()
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = 1.0 / mean.float().std().item()
    torch.save({"mean": mean, "std": std, "cond": torch.cat(conds), "empty": empty.half(), "scaling": scaling},
               a.work / "encoded.pt")
    log("encode", images=len(images), scaling=scaling, minutes=(time.time() - start) / 60)
    record(a.out, "encode", minutes=(time.time() - start) / 60, scaling_factor=scaling)


# ---------------------------------------------------------------- UNet


def stage_unet(a):
    from diffusers import DDPMScheduler
    # Rounds 3 to 5 all ran with seed 5: each began with the batches and noise of the one before it.
    seed = a.seed if a.seed is not None else 4 + a.continue_unet
    torch.manual_seed(seed)
    enc = torch.load(a.work / "encoded.pt")
    dev = a.device
    mean, std, cond = (enc[k].to(dev) for k in ("mean", "std", "cond"))
    empty, scaling = enc["empty"].float().to(dev), enc["scaling"]
    unet = models.unet(channels=a.unet_channels, attend_first=a.attend_first)
    if a.continue_unet:
        # A later run picks up the saved (EMA) weights with a fresh optimiser: the world's UNet is trained in
        # rounds, each with its own warm-up and cosine decay, because one CPU run cannot do it all at once.
        # With --attend-first, a saved UNet without attention at 16² grows it (models.grow).
        from diffusers import UNet2DConditionModel
        saved = UNet2DConditionModel.from_pretrained(a.work / "unet-f32")
        if tuple(saved.config.block_out_channels) != a.unet_channels:
            raise SystemExit(f"{a.work / 'unet-f32'} has widths {tuple(saved.config.block_out_channels)}: continue "
                             f"it with --unet-channels {','.join(map(str, saved.config.block_out_channels))}")
        if list(saved.config.down_block_types) == list(unet.config.down_block_types):
            unet = saved
        elif a.attend_first:
            unet = models.grow(saved, unet)
        else:
            raise SystemExit(f"{a.work / 'unet-f32'} attends at 16²: continue it with --attend-first")
    unet.to(dev)
    # Built, not copied: its random init draws from the global generator the noise below uses, as in every
    # recorded round, so that a round's `--seed` still reproduces it.
    ema = models.unet(channels=a.unet_channels, attend_first=a.attend_first).to(dev)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    noise_sched = DDPMScheduler.from_config(models.scheduler_config())
    alphas = noise_sched.alphas_cumprod.to(dev)
    snr = alphas / (1 - alphas)
    lr = a.sizes["unet_lr"] * (0.75 if a.continue_unet else 1.0)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    batch = a.sizes["unet_batch"]
    steps = Steps(a.sizes["unet_steps"], a.budget.get("unet"), dev)
    gen = torch.Generator().manual_seed(seed)
    start, running, step = time.time(), None, 0
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    # The world's UNet is so small that a GPU step is bound by Python and kernel launches (13.6 steps/s on an
    # H200 in eager mode); compiling fuses its element-wise work into fewer, larger kernels.
    forward = torch.compile(unet) if a.compile else unet
    while not steps.done(step):
        idx = random_batch(gen, len(mean), batch).to(dev)
        z = (mean[idx].float() + std[idx].float() * torch.randn(batch, 4, models.LATENT, models.LATENT,
                                                                  device=dev)) * scaling
        c = cond[idx].float()
        drop = torch.rand(batch, device=dev) < 0.1  # the unconditional branch of classifier-free guidance
        c = torch.where(drop[:, None, None], empty, c)
        t = torch.randint(0, 1000, (batch,), device=dev)
        eps = torch.randn_like(z)
        with amp(a):
            pred = forward(noise_sched.add_noise(z, eps, t), t, encoder_hidden_states=c).sample.float()
        # Min-SNR-5 weighting: the easy, low-noise steps stop dominating, which speeds a small model's training.
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (weight * (pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()
        set_lr(opt, cosine_lr(step, steps.total, lr, 300))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        if step % 50 == 0:  # reading the loss waits for the GPU: not every step
            running = loss.item() if running is None else 0.8 * running + 0.2 * loss.item()
        if step % 500 == 0:
            log("unet", step=step, loss=running, minutes=(time.time() - start) / 60)
        step += 1
    log("unet", step=step, loss=running, minutes=(time.time() - start) / 60)
    ema.cpu().save_pretrained(a.work / "unet-f32", safe_serialization=True)
    rounds = (previous_rounds(a.out, "unet", 4e-4) if a.continue_unet else []) + [
        dict(minutes=(time.time() - start) / 60, final_loss=running, steps=step, batch=batch, lr=lr,
             device=dev.type, attend_first=a.attend_first, channels=list(a.unet_channels), seed=seed)]
    record(a.out, "unet", minutes=sum(r["minutes"] for r in rounds), final_loss=running,
           steps=sum(r["steps"] for r in rounds), batch=batch, rounds=rounds)


STAGES = {"data": stage_data, "recognizer": stage_recognizer, "clip": stage_clip, "vae": stage_vae,
          "encode": stage_encode, "unet": stage_unet, "assemble": stage_assemble, "samples": stage_samples,
          "resume": stage_resume}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="+", choices=[*STAGES, "all"])
    p.add_argument("--work", type=Path, default=Path("/tmp/persona-world"))
    p.add_argument("--out", type=Path, help="where the world's models go (default: world/; with --quick: WORK/world)")
    p.add_argument("--resume-from", type=Path, default=ROOT / "world",
                   help="resume stage: the assembled world whose models go into the work folder (default: world/)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to try the stages end to end in minutes")
    p.add_argument("--revision", type=int, choices=sorted(world.REVISIONS), default=1,
                   help="data and samples stages: the world's population (world.py --revision): 1, the committed "
                        "world's; 2, the next (more names, trait words)")
    p.add_argument("--gpu", action="store_true",
                   help="the GPU profile: device cuda, bf16 autocast, GPU_SIZES (use with --budget, see gpu.sh)")
    p.add_argument("--device", help="torch device (default: cuda with --gpu, else cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (on with --gpu)")
    p.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                   help="train STAGE (recognizer, clip, vae, unet) for this many seconds instead of its step count")
    p.add_argument("--samples", type=Path,
                   help="where the samples stage writes its grid (default: docs/world_samples.png; with --quick: "
                        "WORK/world_samples.png)")
    p.add_argument("--compile", action="store_true", help="unet stage: torch.compile the UNet's training forward")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="rendering processes of the data stage")
    p.add_argument("--continue-unet", action="store_true",
                   help="the unet stage starts from the saved UNet (another round) instead of from scratch")
    p.add_argument("--continue-clip", action="store_true",
                   help="the clip stage starts from the saved CLIP model (fine-tuning, at 0.3× the learning rate)")
    p.add_argument("--clip-steps", type=int, help="steps of the clip stage (default: %d)" % SIZES["clip_steps"])
    p.add_argument("--name-weight", type=float, default=0.0,
                   help="clip stage: weight of the name term that keeps names' token states apart (names.py)")
    p.add_argument("--name-anchors", type=Path,
                   help="clip stage: a torch file [names, D] of each named person's mean recogniser embedding; the "
                        "name term then pulls names towards them (names.py)")
    p.add_argument("--attend-first", action="store_true",
                   help="unet stage: cross-attention at the 16² level too (grown from a saved UNet without it)")
    p.add_argument("--unet-channels", type=models.unet_widths, default=models.UNET_CHANNELS, metavar="C1,C2,C3",
                   help="unet stage: the three levels' widths, multiples of 32 (default 32,64,96). world/ must stay "
                        "within 15 MB, which leaves the UNet about 7 MB in f16: 64,64,96 with --attend-first is "
                        "6.9 MB, 64,128,128 would be 13.7 (docs/world.md)")
    p.add_argument("--seed", type=int,
                   help="unet stage: seed of its batches and noise (default: 4, or 5 with --continue-unet); give "
                        "each later round its own, or it sees the batches of the round before it again")
    p.add_argument("--unet-steps", type=int, help="steps of the unet stage (default: %d)" % SIZES["unet_steps"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    a.sizes = dict(GPU_SIZES if a.gpu else SIZES)
    a.device = torch.device(a.device or ("cuda" if a.gpu else "cpu"))
    a.amp = a.amp or a.gpu
    a.batch_scale = 4 if a.gpu else 1
    a.budget = {k: float(v) for k, v in (b.split("=", 1) for b in a.budget)}
    a.out = a.out or (a.work / "world" if a.quick else ROOT / "world")
    a.samples = a.samples or (a.work / "world_samples.png" if a.quick else ROOT / "docs" / "world_samples.png")
    if a.quick:
        a.sizes.update(sd_images=2000, recognizer_per_person=4, recognizer_epochs=1, clip_steps=20, clip_batch=64,
                       vae_steps=20, unet_steps=20, unet_batch=32)
    if a.unet_steps:
        a.sizes["unet_steps"] = a.unet_steps
    if a.clip_steps:
        a.sizes["clip_steps"] = a.clip_steps
    if a.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    stages = [s for s in STAGES if s != "resume"] if "all" in a.stages else a.stages
    for s in stages:
        t = time.time()
        STAGES[s](a)
        print(f"== {s} done in {(time.time() - t) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
