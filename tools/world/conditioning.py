"""How much the world pipeline's text reaches its UNet: the frozen text states of a few prompts (cosine
between whole conditions), and the UNet's ε-prediction with each condition against the unconditional one
(‖ε_c − ε_∅‖ / ‖ε_∅‖) at four noise levels, on one fixed latent, and what a name and a scene word change; and
the cosine between the states of the names' own tokens (what the UNet's cross-attention reads of a name).

    /path/to/venv/bin/python tools/world/conditioning.py [--pipeline world/pipeline] [--text-encoder DIR]

Reads only the committed pipeline; CPU, a few seconds."""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a photo of Adam Sandler on a beach", "a photo of Ann Curry on a beach",
           "a photo of a person on a beach", "a photo of a person in a forest",
           "a photo of a person in the snow at night", "a photo of Adam Sandler in a forest"]
# The committed world's first four celebrities, and the word that stands for an unnamed person.
NAMES = ["Adam Sandler", "Alicia Markova", "Ann Curry", "Ben Schwartz", "person"]


def name_states(tok, text):
    """Each name's token states (mean over its tokens) in "a photo of a NAME on a beach", and their cosines."""
    rows = []
    for name in NAMES:
        prompt = f"a photo of {'a ' if name == 'person' else ''}{name} on a beach"
        ids = tok([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
        key = tok(name, add_special_tokens=False).input_ids
        row = ids[0].tolist()
        start = next(i for i in range(len(row)) if row[i:i + len(key)] == key)
        rows.append(text(ids).last_hidden_state[0, start:start + len(key)].mean(0))
    states = F.normalize(torch.stack(rows), dim=-1)
    return states @ states.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", type=Path, default=ROOT / "world" / "pipeline")
    ap.add_argument("--text-encoder", type=Path, help="another text tower (a CLIPModel or CLIPTextModel folder)")
    a = ap.parse_args()
    tok = CLIPTokenizer.from_pretrained(a.pipeline / "tokenizer")
    text = CLIPTextModel.from_pretrained(a.text_encoder or a.pipeline / "text_encoder").float().eval()
    unet = UNet2DConditionModel.from_pretrained(a.pipeline / "unet").float().eval()
    prompts = PROMPTS + [""]
    with torch.no_grad():
        ids = tok(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        cond = text(ids).last_hidden_state
        flat = cond.reshape(len(prompts), -1)
        cos = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)
        print("cosine between whole conditions (rows and columns in prompt order):")
        for p, row in zip(prompts, cos):
            print(f"  {p or '(empty)':45s}", " ".join(f"{v:5.2f}" for v in row.tolist()))
        torch.manual_seed(0)
        z = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        names = name_states(tok, text)
        print("cosine between the names' own token states (in 'a photo of NAME on a beach'):")
        for n, row in zip(NAMES, names):
            print(f"  {n:15s}", " ".join(f"{v:5.2f}" for v in row.tolist()))
        print("‖ε_c − ε_∅‖ / ‖ε_∅‖ per prompt:")
        for t in (900, 500, 200, 50):
            eps = unet(z.repeat(len(prompts), 1, 1, 1), torch.full((len(prompts),), t),
                       encoder_hidden_states=cond).sample
            rel = [((e - eps[-1]).norm() / eps[-1].norm()).item() for e in eps[:-1]]
            name = ((eps[0] - eps[2]).norm() / eps[2].norm()).item()
            scene = ((eps[3] - eps[2]).norm() / eps[2].norm()).item()
            print(f"  t = {t:3d}:", " ".join(f"{r:5.3f}" for r in rel),
                  f"| name vs 'a person' (beach) {name:5.3f}, forest vs beach (a person) {scene:5.3f}")


if __name__ == "__main__":
    main()
