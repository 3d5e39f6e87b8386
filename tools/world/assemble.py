"""The folders persona loads, from the work folder's f32 models (`train.py assemble`), the sample grid drawn from
them (`samples`), and the way back (`resume`)."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

import models
import world
from loop import log


def link(target: Path, link_path: Path):
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if link_path.is_symlink() or link_path.exists():
        link_path.unlink()
    link_path.symlink_to(os.path.relpath(target, link_path.parent))


def save_f16(tensors: dict, path: Path):
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in tensors.items()}, str(path))


def stage_assemble(a):
    """`world/pipeline` (diffusers StableDiffusionPipeline, f16), `world/clip` (transformers CLIPModel whose text
    tower is the pipeline's text encoder file: shards, one of them a link, so the 49408-row table is stored
    once)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPTextConfig
    pipe, clip = a.out / "pipeline", a.out / "clip"
    for d in (pipe, clip):
        shutil.rmtree(d, ignore_errors=True)
    scaling = torch.load(a.work / "encoded.pt")["scaling"]

    vae = AutoencoderKL.from_pretrained(a.work / "vae-f32")
    vae.register_to_config(scaling_factor=scaling)
    vae.to(torch.float16).save_pretrained(pipe / "vae", safe_serialization=True)
    UNet2DConditionModel.from_pretrained(a.work / "unet-f32").to(torch.float16).save_pretrained(
        pipe / "unet", safe_serialization=True)

    full = load_file(str(a.work / "clip-f32" / "model.safetensors"))
    text = {k: v for k, v in full.items() if k.startswith("text_model.")}
    rest = {k: v for k, v in full.items() if k not in text}
    save_f16(text, pipe / "text_encoder" / "model.safetensors")
    clip_config = CLIPConfig.from_pretrained(a.work / "clip-f32")
    text_config = CLIPTextConfig(**clip_config.text_config.to_dict())
    text_config.architectures = ["CLIPTextModel"]
    text_config.save_pretrained(pipe / "text_encoder")
    clip_config.save_pretrained(clip)
    save_f16(rest, clip / "model-vision.safetensors")
    link(pipe / "text_encoder" / "model.safetensors", clip / "model-text.safetensors")
    weight_map = {k: "model-text.safetensors" for k in text} | {k: "model-vision.safetensors" for k in rest}
    (clip / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"note": "model-text.safetensors is the pipeline's text encoder (one copy of the table)"},
         "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")

    models.tokenizer().save_pretrained(a.work / "tok")  # its config files, copied beside the linked vocabulary
    for folder in (pipe / "tokenizer", clip):
        for name in ("vocab.json", "merges.txt"):
            link(models.TOKENIZER / name, folder / name)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (a.work / "tok" / name).exists():
                shutil.copy(a.work / "tok" / name, folder / name)
    (clip / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": models.IMAGE, "width": models.IMAGE}, "do_center_crop": True,
        "do_normalize": True, "do_resize": True, "do_convert_rgb": True, "image_processor_type": "CLIPImageProcessor",
        "image_mean": models.CLIP_MEAN, "image_std": models.CLIP_STD, "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": models.IMAGE}}, indent=2) + "\n")
    (pipe / "scheduler").mkdir(parents=True, exist_ok=True)
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(models.scheduler_config(), indent=2) + "\n")
    (pipe / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2) + "\n")
    # The names this world's text encoder ties to faces, for Cross Init's anchor (`--names world/names.txt`).
    names = json.loads((a.work / "sd" / "names.json").read_text(encoding="utf-8"))
    (a.out / "names.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    sizes = {str(p.relative_to(a.out)): p.stat().st_size for p in a.out.rglob("*")
             if p.is_file() and not p.is_symlink()}
    log("assemble", megabytes=sum(sizes.values()) / 1e6)


def stage_samples(a):
    """A grid of world celebrities in new scenes, drawn by diffusers from the assembled pipeline (docs/world.md)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from PIL import Image
    world.use_revision(a.revision)
    pipe = StableDiffusionPipeline.from_pretrained(a.out / "pipeline", torch_dtype=torch.float32).to(a.device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    celebrities = world.celebrities()[:4]
    names = [n for n, _ in celebrities]
    # The first column is the person as the world draws them (a close-up, plain scene), to judge the rest by.
    plain = world.random_scene(np.random.default_rng(7), 1, framing="close-up")
    references = [world.render([p], plain, models.IMAGE, seed=0) for _, p in celebrities]
    scenes = ["on a beach", "in a forest, wearing a red sweater", "in the snow, wearing a hat", "at night, smiling",
              "in a city, wearing sunglasses", "in a kitchen, laughing"]
    rows = []
    for name in names:
        prompts = [f"a photo of {name} {s}" for s in scenes]
        g = torch.Generator().manual_seed(0)
        out = pipe(prompts, num_inference_steps=30, guidance_scale=5.0, generator=g, height=models.IMAGE,
                   width=models.IMAGE).images
        rows.append(out)
    side, gap = models.IMAGE * 2, 8
    grid = Image.new("RGB", (side * (len(scenes) + 1) + gap, side * len(rows)), (255, 255, 255))
    for r, (reference, row) in enumerate(zip(references, rows)):
        grid.paste(reference.resize((side, side), Image.NEAREST), (0, r * side))
        for c, img in enumerate(row):
            grid.paste(img.resize((side, side), Image.NEAREST), (side + gap + c * side, r * side))
    a.samples.parent.mkdir(parents=True, exist_ok=True)
    grid.save(a.samples)
    log("samples", rows=len(rows), columns=len(scenes))


def stage_resume(a):
    """The work folder's f32 models from an assembled world (`--resume-from`, default world/): the VAE, the CLIP
    model and the UNet, so that `encode` and `unet --continue-unet` can go on from a world trained elsewhere (an
    f32 UNet already in the work folder, e.g. the EMA weights brought back from a GPU machine, is kept)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel
    AutoencoderKL.from_pretrained(a.resume_from / "pipeline" / "vae").float().save_pretrained(
        a.work / "vae-f32", safe_serialization=True)
    CLIPModel.from_pretrained(a.resume_from / "clip").float().save_pretrained(a.work / "clip-f32",
                                                                               safe_serialization=True)
    if not (a.work / "unet-f32").exists():
        UNet2DConditionModel.from_pretrained(a.resume_from / "pipeline" / "unet").float().save_pretrained(
            a.work / "unet-f32", safe_serialization=True)
    log("resume", world=str(a.resume_from))
