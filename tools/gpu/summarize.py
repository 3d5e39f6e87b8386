"""The table of tools/gpu/check.sh: persona's figures next to diffusers', from the stages' logs.

    python3 tools/gpu/summarize.py --logs DIR --mode gpu|smoke --batch 8 --gen-steps 50 --run-steps 320 --out FILE

Reads DIR/stages.tsv (name, exit status, seconds), DIR/<stage>.out (persona's one JSON line), DIR/train.log
(persona train's summary line), DIR/diffusers.json (tools/bench/diffusers_gpu.py); prints one table
(figure | persona | diffusers | ratio = persona / diffusers: below 1 persona is faster or smaller) and writes
it with the raw figures as JSON. Exit status 1 when a stage failed or the equality check did not pass.
Standard library only.
"""
import argparse
import json
import re
from pathlib import Path


def last_json(path):
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def all_json(path):
    """Every JSON line of a stage's output (conv-grad prints one per downsampler)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line)) if line.strip().startswith("{") else None
        except json.JSONDecodeError:
            pass
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logs", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--gen-steps", type=int, required=True)
    ap.add_argument("--run-steps", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    logs = Path(a.logs)

    stages = {}
    if (logs / "stages.tsv").is_file():
        for line in (logs / "stages.tsv").read_text().splitlines():
            name, rc, secs = line.split("\t")
            stages[name] = {"rc": rc, "seconds": float(secs)}
    ours = {n: last_json(logs / f"{n}.out") for n in ["equality", "gradcheck", "unet", "generate", "step-tokens", "step-idea", "make-model"]}
    peer = {}
    if (logs / "diffusers.json").is_file():
        peer = json.loads((logs / "diffusers.json").read_text())

    def fig(name, key="median_s"):
        j = ours.get(name)
        return None if j is None else j.get(key)

    def peak(name):
        j = ours.get(name) or {}
        return j.get("peak_gpu_gb", j.get("peak_rss_gb"))

    train_wall = stages.get("train", {}).get("seconds") if stages.get("train", {}).get("rc") == "0" else None
    train_only = None
    log = logs / "train.log"
    if train_wall is not None and log.is_file():
        m = re.search(r"(\d+) steps in ([0-9.]+) s", log.read_text(errors="replace"))
        if m:
            train_only = float(m.group(2))

    b, g, r = a.batch, a.gen_steps, a.run_steps
    rows = [
        # figure, unit, persona, diffusers, note
        ("unet_forward_b2", "s", fig("unet"), peer.get("unet_forward_b2"), "UNet forward, batch 2, 64² latents"),
        (f"generate_{g}", "s", fig("generate"), peer.get(f"generate_{g}"), f"one image, DDIM {g} steps, guidance 7.5"),
        (f"train_step_b{b}", "s", fig("step-tokens"), peer.get(f"train_step_b{b}"), "textual-inversion step (persona: tokens)"),
        (f"train_step_b{b}_peak_gb", "GB", peak("step-tokens"), peer.get(f"train_step_b{b}_peak_gb"), "peak memory of that step"),
        (f"train_step_b{b} idea", "s", fig("step-idea"), peer.get(f"train_step_b{b}"), "persona ID-EA step vs diffusers TI step"),
        (f"train_step_b{b}_peak_gb idea", "GB", peak("step-idea"), peer.get(f"train_step_b{b}_peak_gb"), "peak memory, ID-EA vs TI"),
        (f"train_run_{r}_s", "s", train_wall, peer.get(f"train_run_{r}_s"), "whole run incl. model load (persona ID-EA vs diffusers TI)"),
        (f"train_run_{r}_train_only_s", "s", train_only, peer.get(f"train_run_{r}_train_only_s"), "the training loop alone"),
    ]
    table = []
    for name, unit, p, d, note in rows:
        ratio = p / d if isinstance(p, (int, float)) and isinstance(d, (int, float)) and d else None
        table.append({"figure": name, "unit": unit, "persona": p, "diffusers": d, "ratio": ratio, "note": note})

    eq = ours.get("equality") or {}
    failed = [n for n, s in stages.items() if s["rc"] != "0"]
    equality_passed = bool(eq.get("passed"))

    def fmt(x, width, prec):
        return f"{'—':>{width}s}" if x is None else f"{x:{width}.{prec}f}"
    print(f"\npersona vs diffusers ({a.mode}; ratio = persona / diffusers, below 1: persona faster / smaller)")
    print(f"{'figure':36s} {'persona':>10s} {'diffusers':>10s} {'ratio':>7s}")
    for t in table:
        print(f"{t['figure'] + ' (' + t['unit'] + ')':36s} {fmt(t['persona'], 10, 3)} {fmt(t['diffusers'], 10, 3)} {fmt(t['ratio'], 7, 2)}")
    if eq:
        worst = {}
        for row in eq.get("rows", []):
            kind = "image f32" if row["what"].startswith("image") and row["enforced"] else \
                   "image bf16 (reported)" if row["what"].startswith("image") else "training f32"
            worst[kind] = max(worst.get(kind, 0.0), row["value"])
        devices = " vs ".join(eq.get("devices", []))
        print(f"equality ({devices}): {'passed' if equality_passed else 'FAILED'}; worst: " +
              ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    else:
        print("equality: no result")
    conv = all_json(logs / "conv-grad.out")
    for c in conv:
        print(f"stride-2 input gradient, {c['channels']} channels at {c['side']}²: dilated {c['dilated_conv_s']:.4f} s, "
              f"conv_transpose2d {c['conv_transpose2d_s'] if c['conv_transpose2d_s'] is not None else c['conv_transpose2d_error']} s; "
              f"persona uses {c['used']}")
    grad = ours.get("gradcheck") or {}
    if grad:
        worst = {}
        for row in grad.get("rows", []):
            worst[row["suite"]] = max(worst.get(row["suite"], 0.0), row["error"] / row["limit"])
        print(f"gradient checks on {grad.get('device')}: {'passed' if grad.get('passed') else 'FAILED'}; worst error / limit: " +
              ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    else:
        print("gradient checks: no result")
    if failed:
        print("stages that failed or timed out: " + ", ".join(f"{n} (rc {stages[n]['rc']})" for n in failed))

    result = {
        "mode": a.mode, "table": table, "equality": eq, "equality_passed": equality_passed, "gradcheck": grad, "conv_grad": conv, "stages": stages,
        "persona": ours, "diffusers": peer,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if equality_passed and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
