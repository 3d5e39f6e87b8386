"""Peer benchmark for persona on a GPU: diffusers / PyTorch as a diffusers user runs them, SD 2.1-base
architecture with RANDOM weights (configs only, no hub), models cast to --dtype, SDPA attention (diffusers'
default AttnProcessor2_0). Training follows diffusers' examples/textual_inversion/textual_inversion.py with
accelerate mixed precision: UNet and VAE in the weight dtype, the text encoder in f32 under
torch.autocast(device, dtype) (plus a GradScaler for f16), gradient into the token-embedding table only, AdamW,
then the non-placeholder rows restored.

    python tools/bench/diffusers_gpu.py --device cuda --dtype bf16 --out results.json
    python tools/bench/diffusers_gpu.py --device cpu --dtype f32 --tiny --run-steps 3 --steps-gen 3 --out /tmp/x.json

Figures (seconds unless named otherwise):
    unet_forward_b2             UNet forward, batch 2, latents 64x64, 77-token condition (median of 5, 2 warm-ups)
    generate_50                 one 512x512 image, DDIM, 50 steps, guidance 7.5, "np" output (median of 3, 1 warm-up)
    train_step_b8               one textual-inversion step, batch 8, 512x512 (median of 5, 2 warm-ups)
    train_step_b8_peak_gb       torch.cuda.max_memory_allocated over those steps (weights included), GB (1e9 bytes)
    train_run_320_s             320 steps: from from_pretrained of the saved random models to the end of training
    train_run_320_train_only_s  the training loop alone
--tiny uses fixtures/sd2-tiny's configs (latents 16x16, images 32x32) for a CPU smoke test.

Model configs: fixtures/manifests/sd21-base/{unet,text_encoder,vae}/config.json (the published ones); scheduler:
fixtures/sd2-tiny/scheduler/scheduler_config.json (SD 2.1-base's PNDM config; DDIM / DDPM built from it).
Tokenizer: fixtures/clip-tokenizer (the real CLIP vocabulary) as a CLIPTokenizer with SD 2's "!" padding.
Needs torch, transformers, diffusers, safetensors (accelerate optional); no network. Without diffusers installed:
see tools/bench/README.md (the pure-Python wheel, `pip install --no-deps --target`).
"""
import argparse
import contextlib
import copy
import gc
import json
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import diffusers
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
PARTS = ["unet", "generate", "train_step", "train_run"]
PROMPT = "a photo of an astronaut riding a horse on the moon"
PLACEHOLDER = "<person>"
INIT_TOKEN = "person"
TEMPLATES = ["a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
             "a photo of a clean {}", "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}"]
N_PHOTOS = 5


def read_json(path):
    return json.loads(Path(path).read_text())


def configs(tiny):
    base = FIXTURES / ("sd2-tiny" if tiny else "manifests/sd21-base")
    out = {part: read_json(base / part / "config.json") for part in ("unet", "vae", "text_encoder")}
    out["scheduler"] = read_json(FIXTURES / "sd2-tiny" / "scheduler" / "scheduler_config.json")
    return out


def tokenizer(folder):
    """The hub layout (vocab.json, merges.txt, tokenizer_config.json) that every transformers version loads."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(FIXTURES / "clip-tokenizer" / name, folder / name)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "!", "add_prefix_space": False}))
    return CLIPTokenizer.from_pretrained(folder)


def build(cfg, folder):
    """Random-weight f32 models on CPU, saved in diffusers layout under `folder`."""
    torch.manual_seed(0)
    models = {
        "unet": UNet2DConditionModel.from_config(cfg["unet"]),
        "vae": AutoencoderKL.from_config(cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"])),
    }
    for m in models.values():
        m.eval().requires_grad_(False)
    models["tokenizer"] = tokenizer(folder / "tokenizer")
    return models


def save(models, cfg, folder):
    for name in ("unet", "vae", "text_encoder"):
        models[name].save_pretrained(folder / name, safe_serialization=True)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg["scheduler"]))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(device, fn, warm, runs):
    for _ in range(warm):
        fn()
    sync(device)
    times = []
    for _ in range(runs):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def latent_size(unet, vae):
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return unet.config.sample_size, f


# ----------------------------------------------------------------------------------------------------------------
# inference


@torch.no_grad()
def bench_unet(unet, device, dtype):
    s = unet.config.sample_size
    torch.manual_seed(1)
    x = torch.randn(2, 4, s, s, device=device, dtype=dtype)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    t = torch.tensor([999, 500], device=device)
    finite = bool(torch.isfinite(unet(x, t, cond).sample).all())  # random weights may overflow f16
    med, times = timed(device, lambda: unet(x, t, cond), warm=2, runs=5)
    return {"unet_forward_b2": med, "unet_forward_b2_runs": times, "unet_out_finite": finite}


@torch.no_grad()
def bench_generate(models, te_infer, cfg, device, steps):
    unet, vae = models["unet"], models["vae"]
    s, f = latent_size(unet, vae)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te_infer, tokenizer=models["tokenizer"], unet=unet,
                                   scheduler=DDIMScheduler.from_config(cfg["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def run():
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=s * f, width=s * f,
                    output_type="np", generator=gen).images

    med, times = timed(device, run, warm=1, runs=3)
    return {f"generate_{steps}": med, f"generate_{steps}_runs": times, "image_size": s * f}


# ----------------------------------------------------------------------------------------------------------------
# textual inversion (examples/textual_inversion/textual_inversion.py, one placeholder token)


class TextualInversion:
    def __init__(self, unet, vae, text_encoder, tok, noise_scheduler, device, dtype, batch, lr=5e-3):
        self.unet, self.vae, self.te, self.tok = unet, vae, text_encoder, tok
        self.sched, self.device, self.dtype, self.batch = noise_scheduler, device, dtype, batch
        assert tok.add_tokens([PLACEHOLDER]) == 1
        self.pid = tok.convert_tokens_to_ids(PLACEHOLDER)
        init_id = tok.encode(INIT_TOKEN, add_special_tokens=False)[0]
        text_encoder.resize_token_embeddings(len(tok))  # on CPU, before the move, as the script does
        with torch.no_grad():
            table = text_encoder.get_input_embeddings().weight
            table[self.pid] = table[init_id].clone()
        text_encoder.to(device)  # f32: accelerate's autocast handles the mixed precision
        emb = text_encoder.get_input_embeddings().weight
        text_encoder.requires_grad_(False)
        emb.requires_grad_(True)  # textual_inversion.py freezes all but the token embedding
        text_encoder.train()
        self.orig = emb.detach().clone()
        self.keep = torch.ones(len(tok), dtype=torch.bool, device=device)
        self.keep[self.pid] = False
        self.opt = torch.optim.AdamW([emb], lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.ids = tok([t.format(PLACEHOLDER) for t in TEMPLATES], padding="max_length", max_length=77,
                       truncation=True, return_tensors="pt").input_ids.to(device)
        s, f = latent_size(unet, vae)
        g = torch.Generator().manual_seed(2)
        self.photos = (torch.rand(N_PHOTOS, 3, s * f, s * f, generator=g) * 2 - 1).to(device)
        self.autocast = (contextlib.nullcontext() if dtype == torch.float32 else
                         torch.autocast(device_type=device.type, dtype=dtype))
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None  # accelerate fp16
        self.rng = random.Random(3)

    def step(self):
        b, dev = self.batch, self.device
        pick = torch.tensor([self.rng.randrange(N_PHOTOS) for _ in range(b)], device=dev)
        pixels = self.photos[pick]
        flip = torch.tensor([self.rng.random() < 0.5 for _ in range(b)], device=dev)
        pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        ids = self.ids[torch.tensor([self.rng.randrange(len(TEMPLATES)) for _ in range(b)], device=dev)]
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.dtype)).latent_dist.sample().detach()
            latents = latents * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (b,), device=dev).long()
        noisy = self.sched.add_noise(latents, noise, t)
        with self.autocast:  # accelerate wraps the prepared text encoder's forward in autocast
            cond = self.te(ids)[0].to(dtype=self.dtype)
        pred = self.unet(noisy, t, cond).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.te.get_input_embeddings().weight[self.keep] = self.orig[self.keep]
        return loss.detach()


def bench_train_step(models, te_f32, cfg, device, dtype, batch):
    ti = TextualInversion(models["unet"], models["vae"], te_f32, copy.deepcopy(models["tokenizer"]),
                          DDPMScheduler.from_config(cfg["scheduler"]), device, dtype, batch)
    ti.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    med, times = timed(device, ti.step, warm=1, runs=5)  # 2 warm-ups in all
    out = {f"train_step_b{batch}": med, f"train_step_b{batch}_runs": times}
    if device.type == "cuda":
        out[f"train_step_b{batch}_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return out


def bench_train_run(folder, device, dtype, batch, steps):
    sync(device)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device, dtype=dtype).requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(folder / "vae").to(device, dtype=dtype).requires_grad_(False)
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    ti = TextualInversion(unet, vae, te, tok, sched, device, dtype, batch)
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        loss = ti.step()
    sync(device)
    t2 = time.perf_counter()
    emb = te.get_input_embeddings().weight.detach()
    return {f"train_run_{steps}_s": t2 - t0, f"train_run_{steps}_train_only_s": t2 - t1,
            f"train_run_{steps}_load_s": t1 - t0, "train_run_last_loss": float(loss),
            "train_run_rows_kept": bool(torch.equal(emb[ti.keep], ti.orig[ti.keep])),
            "train_run_placeholder_moved": float((emb[ti.pid] - ti.orig[ti.pid]).norm())}


# ----------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--tiny", action="store_true", help="fixtures/sd2-tiny configs (CPU smoke test)")
    ap.add_argument("--steps-gen", type=int, default=50)
    ap.add_argument("--run-steps", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    parts = [p for p in a.only.split(",") if p]
    assert all(p in PARTS for p in parts), f"--only takes {PARTS}"
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    cfg = configs(a.tiny)
    tmp = Path(tempfile.mkdtemp(prefix="diffusers_gpu_"))
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
               or platform.machine(), "dtype": a.dtype, "arch": "sd2-tiny" if a.tiny else "sd21-base",
               "torch": torch.__version__, "diffusers": diffusers.__version__,
               "transformers": transformers.__version__, "batch": a.batch}
    if device.type == "cpu":
        results["threads"] = torch.get_num_threads()
    else:  # PyTorch defaults, left as they are (TF32 off for matmuls, on for cuDNN convolutions)
        results["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        results["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    try:
        t = time.perf_counter()
        models = build(cfg, tmp)
        if "train_run" in parts:
            save(models, cfg, tmp)
        print(f"built random models in {time.perf_counter() - t:.1f} s ({tmp})", flush=True)
        te = models.pop("text_encoder")
        if any(p in parts for p in ("unet", "generate", "train_step")):
            models["unet"].to(device, dtype=dtype)
            models["vae"].to(device, dtype=dtype)
        results["attn_processor"] = sorted({type(p).__name__ for p in models["unet"].attn_processors.values()})
        if "unet" in parts:
            results.update(bench_unet(models["unet"], device, dtype))
            print(f"unet_forward_b2 {results['unet_forward_b2']:.4f} s", flush=True)
        if "generate" in parts:
            te_infer = copy.deepcopy(te).to(device, dtype=dtype)
            results.update(bench_generate(models, te_infer, cfg, device, a.steps_gen))
            del te_infer
            free(device)
            print(f"generate_{a.steps_gen} {results[f'generate_{a.steps_gen}']:.3f} s", flush=True)
        if "train_step" in parts:
            results.update(bench_train_step(models, copy.deepcopy(te), cfg, device, dtype, a.batch))
            print(f"train_step_b{a.batch} {results[f'train_step_b{a.batch}']:.3f} s", flush=True)
        del models, te
        free(device)
        if "train_run" in parts:
            results.update(bench_train_run(tmp, device, dtype, a.batch, a.run_steps))
            print(f"train_run_{a.run_steps} {results[f'train_run_{a.run_steps}_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'figure':32s} value   ({results['device']}, {a.dtype}, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__})")
    for k, v in results.items():
        if isinstance(v, float):
            print(f"{k:32s} {v:.4f}")
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
