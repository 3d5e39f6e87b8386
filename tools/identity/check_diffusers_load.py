"""Check that `persona export` files load in diffusers exactly.

Builds a 2-token identity on sd2-tiny (d = 32) and exports it with the Rust code (the ignored test
`write_exports_for_the_diffusers_check` in crates/persona-train/tests/identity.rs), then:

1. `pipe.load_textual_inversion(<diffusers export>)` on a StableDiffusionPipeline from fixtures/sd2-tiny:
   the tokens `<alice>`, `<alice>_1` are added and their embedding rows equal the identity's vectors bit for bit;
   `maybe_convert_prompt` expands `<alice>` to both tokens.
2. the same for the A1111 export (`{"emb_params": …}`), loaded with `token="<alice>"` as diffusers requires for a
   file whose only key is not the token.

    /work/refvenv/bin/python tools/identity/check_diffusers_load.py [--exports DIR]

With --exports, DIR must already hold the files the Rust test writes (diffusers.safetensors, a1111.safetensors,
expected.safetensors); otherwise they are made in a temporary folder with cargo.
"""

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TOKEN = "<alice>"


def make_exports(out: Path) -> None:
    env = dict(os.environ, PERSONA_IDENTITY_EXPORT_DIR=str(out))
    cmd = ["cargo", "test", "-q", "-p", "persona-train", "--test", "identity", "write_exports_for_the_diffusers_check", "--", "--ignored", "--exact"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def check(pipe: StableDiffusionPipeline, expected: torch.Tensor) -> None:
    names = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, expected.shape[0])]
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    assert all(i >= 49408 for i in ids), f"tokens not added: {dict(zip(names, ids))}"
    rows = pipe.text_encoder.get_input_embeddings().weight[ids].detach()
    assert torch.equal(rows, expected), f"max difference {(rows - expected).abs().max()}"
    expanded = pipe.maybe_convert_prompt(f"a photo of {TOKEN}", pipe.tokenizer)
    assert expanded == "a photo of " + " ".join(names), expanded
    print(f"  tokens {names} -> ids {ids}: rows equal the exported vectors; prompt expands to {expanded!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=Path, help="folder already holding the Rust exports")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exports = args.exports or Path(tmp)
        if args.exports is None:
            make_exports(exports)
        expected = load_file(exports / "expected.safetensors")["vectors"]
        for name, token in [("diffusers.safetensors", None), ("a1111.safetensors", TOKEN)]:
            pipe = StableDiffusionPipeline.from_pretrained(REPO / "fixtures" / "sd2-tiny", safety_checker=None)
            pipe.load_textual_inversion(str(exports / name), token=token)
            print(f"{name}: loaded with load_textual_inversion(token={token!r})")
            check(pipe, expected)
    print("OK: diffusers loads persona's exports exactly")


if __name__ == "__main__":
    main()
