"""Write the small embedding files that `crates/persona-identity/tests/identity.rs` imports.

Each file is what a real tool writes, made here with the real tool's own saving code path (torch.save /
safetensors) so the Rust reader is tested against genuine byte layouts, at a tiny width (d = 32, sd2-tiny's
text encoder). Vectors are deterministic: row i, column j holds `(i + 1) * 0.5 + j / 64` (f32-exact values),
so the Rust tests can assert them without a side file.

    /work/refvenv/bin/python tools/identity/make_files.py [--out fixtures/identity]

Files:
  diffusers.bin          torch.save({"<tiny>": FloatTensor[2, 32]})      diffusers textual_inversion.py (multi-vector)
  diffusers.safetensors  {"<tiny>": [2, 32]}                             diffusers, safetensors flavour
  a1111.pt               {"string_to_token": {"*": 265}, "string_to_param": {"*": Tensor[3, 32] (requires_grad)},
                          "name": "tiny-a1111", "step": 100, "sd_checkpoint": …, "sd_checkpoint_name": …}
  a1111.safetensors      {"emb_params": [3, 32]}                         AUTOMATIC1111 / ComfyUI
  a1111_sdxl.safetensors {"clip_l": [2, 32], "clip_g": [2, 48]}          AUTOMATIC1111 SDXL
  learned_embeds_f16.bin {"<h>_v0": HalfTensor[32], "<h>_v1": view of a bigger storage}  official-script layout,
                          half precision, the second vector a strided-storage view (offset != 0)
  bare.pt                torch.save(FloatTensor[2, 32])                 a bare tensor, no token name
  malicious.bin          a torch zip whose data.pkl calls os.system via __reduce__ (must be refused, never run)
  malicious.pkl          the same payload as a plain pickle (not a torch archive)

The payload would create /tmp/persona_identity_pwned; the Rust test asserts that file never appears.
"""

import argparse
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

D = 32
PWNED = "/tmp/persona_identity_pwned"


def rows(n: int, d: int = D) -> torch.Tensor:
    """Deterministic rows `(i + 1) * 0.5 + j / 64`, exactly representable in f16 and f32."""
    i = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    j = torch.arange(d, dtype=torch.float32).unsqueeze(0)
    return (i + 1) * 0.5 + j / 64


class Payload:
    """Unpickling this calls os.system: what a hostile `.bin` does to `torch.load(weights_only=False)`."""

    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "fixtures" / "identity")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    torch.save({"<tiny>": rows(2)}, out / "diffusers.bin")
    save_file({"<tiny>": rows(2)}, out / "diffusers.safetensors")

    param = rows(3).clone().requires_grad_(True)
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": param},
            "name": "tiny-a1111",
            "step": 100,
            "sd_checkpoint": "0123abcd",
            "sd_checkpoint_name": "sd2-tiny",
        },
        out / "a1111.pt",
    )
    save_file({"emb_params": rows(3)}, out / "a1111.safetensors")
    save_file({"clip_l": rows(2), "clip_g": rows(2, 48)}, out / "a1111_sdxl.safetensors")

    table = torch.zeros(4, D, dtype=torch.float16)
    table[2] = rows(2)[1].half()
    torch.save({"<h>_v0": rows(1)[0].half(), "<h>_v1": table[2]}, out / "learned_embeds_f16.bin")

    torch.save(rows(2), out / "bare.pt")

    torch.save({"<evil>": Payload()}, out / "malicious.bin")
    (out / "malicious.pkl").write_bytes(pickle.dumps({"<evil>": Payload()}, protocol=2))
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
