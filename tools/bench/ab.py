"""persona against its PyTorch peer on one phase, interleaved (A B A B …), so that one run on a noisy machine
still gives a fair ratio: the machine's slow stretches fall on both sides alike.

    /path/to/venv/bin/python tools/bench/ab.py --part unet --batch 2 --rounds 4
    /path/to/venv/bin/python tools/bench/ab.py --part train-step --rounds 3 --json ab-train.json

Each round starts both sides afresh (one process each: model build, one warm-up, `--runs` timed runs) and takes
the best of that round's runs; the report is the median over rounds of each side, their ratio (persona / peer)
and the peak resident memory. Parts: text-encoder, unet (64×64 latents: 512² images), vae-encode and vae-decode
(512² images), generate (one whole 512² image: `--steps` DDIM steps with guidance), train-step (one forward +
backward of textual inversion / Cross Init, or of ID-EA with `--method idea`). Same architecture (random weights, `--arch`), fp32, the same threads
(both default to every core).
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# part → (persona bench subcommand, peer script, extra peer arguments)
PARTS = {
    "text-encoder": ("text-encoder", "unet.py", ["--part", "text-encoder"]),
    "unet": ("unet", "unet.py", ["--part", "unet"]),
    "vae-encode": ("vae-encode", "unet.py", ["--part", "vae-encode"]),
    "vae-decode": ("vae-decode", "unet.py", ["--part", "vae-decode"]),
    "generate": ("generate", "unet.py", ["--part", "generate"]),
    "train-step": ("train-step", "train_step.py", []),
}


def run_json(cmd: list) -> dict:
    """Runs one side and returns the JSON line it prints (its last line that parses)."""
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    for line in reversed(out.stdout.splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    sys.exit(f"{' '.join(cmd)} printed no JSON line")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=PARTS, required=True)
    ap.add_argument("--arch", choices=["sd21-base", "sd15"], default="sd21-base")
    ap.add_argument("--size", type=int, default=64, help="latent side (64: 512² images)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2, help="timed runs per side and round (after one warm-up)")
    ap.add_argument("--steps", type=int, default=10, help="generate: DDIM steps")
    ap.add_argument("--method", choices=["tokens", "idea"], default="tokens", help="train-step: what is learned")
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds")
    ap.add_argument("--persona", default=str(ROOT / "target/release/persona"))
    ap.add_argument("--json", type=Path, help="also write every round and the summary here")
    a = ap.parse_args()
    sub, script, peer_extra = PARTS[a.part]
    shape = ["--arch", a.arch, "--size", str(a.size), "--runs", str(a.runs)]
    if a.part == "generate":
        shape += ["--steps", str(a.steps)]
    else:
        shape += ["--batch", str(a.batch)]
    method = ["--method", a.method] if a.part == "train-step" else []
    sides = {
        "persona": [a.persona, "bench", sub, *shape, *method],
        "pytorch": [sys.executable, str(ROOT / "tools/bench" / script), *peer_extra, *shape, *method],
    }
    rounds = []
    for r in range(a.rounds):
        row = {name: run_json(cmd) for name, cmd in sides.items()}
        rounds.append(row)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {v['best_s']:.3f} s" for n, v in row.items()),
              flush=True)
    median = {n: statistics.median(r[n]["best_s"] for r in rounds) for n in sides}
    peak = {n: max((r[n].get("peak_rss_gb") or 0.0) for r in rounds) or None for n in sides}
    ratio = median["persona"] / median["pytorch"]
    summary = {"part": a.part, "method": a.method if method else None, "steps": a.steps if a.part == "generate" else None,
               "arch": a.arch, "size": a.size, "batch": a.batch, "rounds": a.rounds,
               "runs": a.runs, "median_best_s": median, "ratio": round(ratio, 3), "peak_rss_gb": peak}
    print(f"{a.part} (batch {a.batch}): persona {median['persona']:.3f} s, pytorch {median['pytorch']:.3f} s "
          f"(medians of {a.rounds} rounds' best) → {ratio:.2f}×")
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
