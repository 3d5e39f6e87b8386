"""How well a world pipeline draws the people it was trained on: the ceiling for every personalization method.

    python tools/world/fidelity.py [--pipeline world/pipeline] [--work /tmp/persona-world] [--vae-only]

A method can only steer the UNet towards faces the UNet can draw from some condition; the celebrities' names are
the conditions training tied to faces. So each named person is drawn with "a close-up photo of NAME …" in four
scenes (DDIM 20 steps, guidance 5 unless `--guidance`, seed = the person's index) and, with the same seeds, with
"a person". The world recogniser compares every image with the mean embedding of that person's single-person
training images (`WORK/sd`, the data stage's output): the mean cosine ("own") and how often the person's own
reference is the nearest of all named people's ("rank-1"; chance is 1 / names). `--vae-only` measures the VAE's
share of the ceiling instead: the cosine of each reference image's reconstruction with the person's other
references.

Needs the data stage's files in WORK (images.npy, ids.json, names.json) from the renderer that trained the
pipeline, and onnxruntime (`pip install onnxruntime`) for the recogniser (docs/world.md)."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop import to_float  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCENES = ["on a beach", "in a forest", "in the snow, wearing a hat", "in a city, smiling"]
REFERENCES = 16  # training images per person averaged into the reference embedding


class Recognizer:
    def __init__(self, path: Path):
        import onnxruntime
        self.session = onnxruntime.InferenceSession(str(path))

    def __call__(self, x):
        """float [N, 3, 64, 64] in [0, 1] → unit embeddings, as persona's `--detector none` feeds the recogniser."""
        x = F.interpolate(x, size=112, mode="bilinear", align_corners=False) * 2 - 1
        return F.normalize(torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0]), dim=1)


def references(work: Path, names: list):
    """[names, REFERENCES, 3, 64, 64]: the first single-person training images of each named person."""
    images = np.load(work / "sd" / "images.npy", mmap_mode="r")
    ids = json.loads((work / "sd" / "ids.json").read_text())
    picks = [[i for i, who in enumerate(ids) if who == [k]][:REFERENCES] for k in range(len(names))]
    return torch.stack([to_float(images[p]) for p in picks])


def draw(pipe, subject: str, seed: int, guidance: float):
    g = torch.Generator().manual_seed(seed)
    out = pipe([f"a close-up photo of {subject} {s}" for s in SCENES], num_inference_steps=20, guidance_scale=guidance,
               generator=g, height=64, width=64, output_type="np").images
    return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def scores(embeddings, refs):
    """embeddings [names, images, D] against refs [names, D]: mean cosine to one's own, rank-1 among all."""
    own = (embeddings * refs[:, None]).sum(-1).mean().item()
    nearest = torch.einsum("npd,kd->npk", embeddings, refs).argmax(-1)
    return own, (nearest == torch.arange(len(refs))[:, None]).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", type=Path, default=ROOT / "world" / "pipeline")
    p.add_argument("--recognizer", type=Path, default=ROOT / "world" / "faces" / "recognizer.onnx")
    p.add_argument("--work", type=Path, default=Path("/tmp/persona-world"))
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default 5, the world's)")
    p.add_argument("--names", type=int, default=40, help="the first N named people (default 40)")
    p.add_argument("--vae-only", action="store_true", help="the VAE's share of the ceiling instead (no sampling)")
    a = p.parse_args()
    torch.set_num_threads(2)
    names = json.loads((a.work / "sd" / "names.json").read_text())[:a.names]
    recognize = Recognizer(a.recognizer)
    ref_images = references(a.work, names)
    ref_each = torch.stack([recognize(r) for r in ref_images])  # [names, REFERENCES, D]
    refs = F.normalize(ref_each.mean(1), dim=1)
    if a.vae_only:
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(a.pipeline / "vae").float().eval()
        with torch.no_grad():
            rec = [(vae.decode(vae.encode(r * 2 - 1).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2
                   for r in ref_images]
        rec_each = torch.stack([recognize(r) for r in rec])
        own_originals = (ref_each * refs[:, None]).sum(-1).mean().item()
        print(f"references vs their person's mean {own_originals:.3f}; their VAE reconstructions "
              f"{scores(rec_each, refs)[0]:.3f}")
        return
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(a.pipeline, torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for label in ("name", "a person"):
        e = torch.stack([recognize(draw(pipe, name if label == "name" else label, k, a.guidance))
                         for k, name in enumerate(names)])
        own, rank1 = scores(e, refs)
        print(f"{label:>8}: cosine to the person {own:.3f}, rank-1 among {len(names)} {rank1:.3f} "
              f"(chance {1 / len(names):.3f})", flush=True)


if __name__ == "__main__":
    main()
