"""Check that `persona export` files load in diffusers exactly.

Builds a 2-token identity on sd2-tiny (d = 32) and exports it with the Rust code (the example
`crates/persona-train/examples/diffusers_exports.rs`), then:

1. `pipe.load_textual_inversion(<diffusers export>)` on a StableDiffusionPipeline from fixtures/sd2-tiny:
   the tokens `<alice>`, `<alice>_1` are added and their embedding rows equal the identity's vectors bit for bit;
   `maybe_convert_prompt` expands `<alice>` to both tokens.
2. the same for the A1111 export (`{"emb_params": …}`), loaded with `token="<alice>"` as diffusers requires for a
   file whose only key is not the token.
3. SDXL: a 2-token identity of widths 32 / 48 (fixtures/sdxl-tiny's encoders). The diffusers export is two files,
   loaded into a StableDiffusionXLPipeline from fixtures/sdxl-tiny with
   `load_textual_inversion(X, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)` and
   `load_textual_inversion(X_2, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)`; the A1111 export
   (`{"clip_l", "clip_g"}`) the same way from its two tensors with `token="<xl>"`. Rows must equal the exported
   vectors in both tables, and the pipeline runs a prompt with the identity (CPU, 2 steps, finite images that differ
   from the prompt without it).

    /work/refvenv/bin/python tools/identity/check_diffusers_load.py [--exports DIR]

With --exports, DIR must already hold the files the Rust test writes (diffusers.safetensors, a1111.safetensors,
expected.safetensors, sdxl_diffusers.safetensors, sdxl_diffusers_2.safetensors, sdxl_a1111.safetensors,
sdxl_expected.safetensors); otherwise they are made in a temporary folder with cargo.
"""

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch
import numpy as np
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TOKEN = "<alice>"


def make_exports(out: Path) -> None:
    cmd = ["cargo", "run", "-q", "-p", "persona-train", "--example", "diffusers_exports", "--", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True)


def check(pipe: StableDiffusionPipeline, expected: torch.Tensor) -> None:
    names = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, expected.shape[0])]
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    assert all(i >= 49408 for i in ids), f"tokens not added: {dict(zip(names, ids))}"
    rows = pipe.text_encoder.get_input_embeddings().weight[ids].detach()
    assert torch.equal(rows, expected), f"max difference {(rows - expected).abs().max()}"
    expanded = pipe.maybe_convert_prompt(f"a photo of {TOKEN}", pipe.tokenizer)
    assert expanded == "a photo of " + " ".join(names), expanded
    print(f"  tokens {names} -> ids {ids}: rows equal the exported vectors; prompt expands to {expanded!r}")


XL = "<xl>"


def check_sdxl(exports: Path) -> None:
    expected = load_file(exports / "sdxl_expected.safetensors")
    n = expected["clip_l"].shape[0]
    names = [XL] + [f"{XL}_{i}" for i in range(1, n)]
    a1111 = load_file(exports / "sdxl_a1111.safetensors")
    assert sorted(a1111) == ["clip_g", "clip_l"], sorted(a1111)
    sources = {
        "sdxl_diffusers.safetensors + sdxl_diffusers_2.safetensors": (
            str(exports / "sdxl_diffusers.safetensors"), str(exports / "sdxl_diffusers_2.safetensors"), None),
        "sdxl_a1111.safetensors (clip_l, clip_g)": (a1111["clip_l"], a1111["clip_g"], XL),
    }
    for label, (first, second, token) in sources.items():
        pipe = StableDiffusionXLPipeline.from_pretrained(REPO / "fixtures" / "sdxl-tiny", dtype=torch.float32,
                                                         add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        kwargs = {} if token is None else {"token": token}
        pipe.load_textual_inversion(first, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, **kwargs)
        pipe.load_textual_inversion(second, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2, **kwargs)
        for key, tok, te in [("clip_l", pipe.tokenizer, pipe.text_encoder),
                             ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]:
            ids = tok.convert_tokens_to_ids(names)
            rows = te.get_input_embeddings().weight[ids].detach()
            assert torch.equal(rows, expected[key]), f"{key}: max difference {(rows - expected[key]).abs().max()}"
        images = {}
        for prompt in (f"a photo of {XL}", "a photo of a person"):
            images[prompt] = pipe(prompt, num_inference_steps=2, height=16, width=16, output_type="np",
                                  generator=torch.Generator().manual_seed(0)).images
        a, b = images.values()
        assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-4, np.abs(a - b).max()
        print(f"{label}: loaded into StableDiffusionXLPipeline (one call per text encoder): tokens {names} have the "
              f"exported rows in both tables; 'a photo of {XL}' ran (max |difference| to no identity "
              f"{np.abs(a - b).max():.3g})")


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
        check_sdxl(exports)
    print("OK: diffusers loads persona's exports exactly (SD 2.x and SDXL)")


if __name__ == "__main__":
    main()
