"""A deterministic procedural "world" of cartoon people, for training tiny models from scratch: who lives in it,
how captions describe them, and the data sets drawn from it.

Identity is a hidden combination of face traits (`Person`, drawn by `drawing.py`), never spelled out by captions
(in revision 2 some name a coarse trait or two, `traits`); everything else (background, clothing, accessories,
expression, pose) is free variation that captions always describe (`Scene`). See README.md for the CLI and the
two revisions of the population (`--revision`).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from drawing import BACKGROUNDS, FRAMINGS, Person, Scene, person, random_scene, render

HELD_OUT = 10
HELD_OUT_SEED0 = 100_000  # held-out people come from seeds >= 100000, disjoint from the training seeds
CELEB_FILE = Path(__file__).resolve().parents[2] / "data" / "celeb_names.txt"


@dataclass(frozen=True)
class Revision:
    """Who lives in the world. The people themselves (`person(seed)`) and the scenes are the same in every
    revision; which seeds are trained on, which are named and how captions name them are not."""
    number: int
    train_people: int   # training identities are seeds 0 .. train_people - 1
    n_celebs: int       # the first n_celebs of them are named in captions
    celeb_stride: int   # names: every celeb_stride-th line of CELEB_FILE (1: the first n_celebs distinct names)
    celeb_share: float  # how often a subject is drawn from the named people (0: uniformly from everyone)
    trait_share: float  # single-person captions that also name coarse traits ("with curly brown hair")
    unnamed: tuple      # two unnamed training people, for the preview


# 1: the world whose models are committed in world/ (docs/world.md); 2: the next one, more names and trait words.
REVISIONS = {1: Revision(1, 300, 40, 17, .4, 0., (57, 123)), 2: Revision(2, 600, 500, 1, 0., .3, (557, 523))}
R = REVISIONS[1]


def use_revision(number: int):
    """Switches every function below to another revision (before any data is drawn)."""
    global R
    R = REVISIONS[number]
    celebrity_names.cache_clear()
    held_out_seeds.cache_clear()


# ------------------------------------------------------------------------------------ caption words
ACC_PHRASE = {"hat": "a hat", "glasses": "glasses", "sunglasses": "sunglasses", "scarf": "a scarf",
              "earrings": "earrings", "headphones": "headphones"}
EXPR_PHRASE = {"neutral": "with a neutral expression", "smiling": "smiling", "laughing": "laughing",
               "eyes closed": "with eyes closed", "surprised": "looking surprised", "sad": "looking sad",
               "angry": "looking angry"}
PAIR_PREFIXES = ("a photo of", "a picture of", "a portrait of")


# --------------------------------------------------------------------------------------- captions
def _join(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _wearing(look):
    first = f"{look.colour} {look.clothing}"
    return _join([("an " if first[0] in "aeiou" else "a ") + first] + [ACC_PHRASE[a] for a in look.accessories])


HAIR_PHRASE = {"short": "short {c} hair", "long": "long {c} hair", "curly": "curly {c} hair", "bald": "a bald head",
               "bun": "{c} hair in a bun", "side part": "side-parted {c} hair", "mohawk": "a {c} mohawk",
               "ponytail": "a {c} ponytail", "afro": "a {c} afro", "bob": "a {c} bob", "buzz": "a {c} buzz cut"}


def _skin_word(p: Person) -> str:
    light = sum(p.skin) / 3
    return "pale skin" if light > 215 else "light skin" if light > 170 else "tan skin" if light > 120 else "dark skin"


def traits(p: Person, pick: int) -> str:
    """Coarse, shared words for one or two of a person's traits (hair, skin, facial hair): text that spans
    appearance as real captions do, while the identity (the combination of every trait) stays hidden."""
    hair = HAIR_PHRASE[p.hair_style].format(c=p.hair_colour_name)
    beard = {"none": None, "stubble": "stubble", "moustache": "a moustache", "beard": "a beard",
             "goatee": "a goatee"}[p.facial_hair]
    options = [[hair], [_skin_word(p)], [hair, _skin_word(p)]] + ([[beard], [hair, beard]] if beard else [])
    return "with " + _join(options[pick % len(options)])


def caption(subjects: list, scene: Scene, described: tuple = ()) -> str:
    """Describes every free attribute (scene, clothing, accessories, expression, framing), never identity;
    `described` (for one subject) optionally adds coarse trait words, see `traits`."""
    place, t = BACKGROUNDS[scene.background][0], scene.template
    if len(subjects) == 1:
        look = scene.looks[0]
        pre = FRAMINGS[look.pose.framing][2][t % 3]
        e, w, s = EXPR_PHRASE[look.expression], _wearing(look), subjects[0]
        if described:
            s = f"{s} {traits(*described)}"
        return [f"{pre} {s} {e} {place}, wearing {w}", f"{pre} {s} {place}, {e}, wearing {w}",
                f"{pre} {s} wearing {w}, {e} {place}"][(t // 3) % 3]
    who = "two people" if all(s == "a person" for s in subjects) else f"{subjects[0]} and {subjects[1]}"
    refs = [s if s != "a person" else f"the person on the {side}" for s, side in zip(subjects, ("left", "right"))]
    parts = [f"{ref} {EXPR_PHRASE[lk.expression]}, wearing {_wearing(lk)}" for ref, lk in zip(refs, scene.looks)]
    if (t // 3) % 2:
        parts.reverse()
    return f"{PAIR_PREFIXES[t % 3]} {who} {place}; " + "; ".join(parts)


# ------------------------------------------------------------------------------------- population
@lru_cache(maxsize=1)
def celebrity_names() -> list:
    """`n_celebs` distinct names of data/celeb_names.txt: every `celeb_stride`-th line from the first (0-based 0,
    17, 34, ... in revision 1), then the same walk from offsets 1, 2, ... if that gives too few."""
    lines = [ln.strip() for ln in CELEB_FILE.read_text(encoding="utf-8").splitlines()]
    walk = (ln for off in range(R.celeb_stride) for ln in lines[off::R.celeb_stride] if ln)
    return list(dict.fromkeys(walk))[:R.n_celebs]


def celebrities() -> list:
    return [(name, person(i)) for i, name in enumerate(celebrity_names())]


def subject_name(identity: int) -> str:
    return celebrity_names()[identity] if identity < R.n_celebs else "a person"


def _look_alike(a: Person, b: Person) -> bool:
    """Same hair style, hair colour and eye colour, and a close skin tone."""
    same = (a.hair_style, a.hair_colour_name, a.eye_colour_name) == (b.hair_style, b.hair_colour_name, b.eye_colour_name)
    return same and abs(sum(a.skin) - sum(b.skin)) < 60


@lru_cache(maxsize=1)
def held_out_seeds() -> list:
    """The first HELD_OUT seeds from HELD_OUT_SEED0 up whose person has no look-alike among the training people
    or earlier held-out people, so no training identity can stand in for them; only near-twins are skipped,
    which keeps the held-out trait distribution close to the training one."""
    chosen, s = [], HELD_OUT_SEED0
    others = [person(i) for i in range(R.train_people)]
    while len(chosen) < HELD_OUT:
        if not any(_look_alike(person(s), o) for o in others):
            chosen.append(s)
            others.append(person(s))
        s += 1
    return chosen


def held_out_person(i: int) -> Person:
    return person(held_out_seeds()[i])


def held_out_photos(i: int, n: int = 6, size: int = 64) -> list:
    """Personalization photos of held-out person i: varied scenes, mostly close-ups, mild accessories."""
    rng = np.random.default_rng([3, i])
    out = []
    for _ in range(n):
        scene = random_scene(rng, 1, mild=True, framing="close-up" if rng.random() < .8 else "medium")
        out.append((render([held_out_person(i)], scene, size, int(rng.integers(2 ** 31))), scene))
    return out


def _draw_ids(rng) -> list:
    """One person, or (15 %) two different ones. Revision 1 draws each from the named people with probability
    `celeb_share` and draws a repeated second again; revision 2 draws uniformly, the second from the others."""
    if not R.celeb_share:
        ids = [int(rng.integers(R.train_people))]
        if rng.random() >= .85:
            second = int(rng.integers(R.train_people - 1))
            ids.append(second + (second >= ids[0]))
        return ids

    def draw():
        named = rng.random() < R.celeb_share
        return int(rng.integers(R.n_celebs)) if named else int(rng.integers(R.n_celebs, R.train_people))
    ids = [draw()]
    if rng.random() >= .85:
        second = draw()
        while second == ids[0]:
            second = draw()
        ids.append(second)
    return ids


def sample(rng, size: int = 64):
    """One training example: ~85% one person, ~15% two different people (see `Revision` for who); in revision 2
    `trait_share` of single-person captions add coarse traits."""
    ids = _draw_ids(rng)
    scene = random_scene(rng, len(ids))
    img = render([person(i) for i in ids], scene, size, int(rng.integers(2 ** 31)))
    described = (person(ids[0]), int(rng.integers(5))) if len(ids) == 1 and rng.random() < R.trait_share else ()
    return img, caption([subject_name(i) for i in ids], scene, described), ids


def dataset(n: int, seed: int, start: int = 0, size: int = 64):
    """Example i depends only on (seed, i), so shards can be produced in parallel and still agree."""
    for i in range(start, start + n):
        yield sample(np.random.default_rng([seed, i]), size)


def recognizer_sample(identity: int, k: int, seed: int = 0, size: int = 64):
    rng = np.random.default_rng([seed, 7, identity, k])
    return render([person(identity)], random_scene(rng, 1), size, int(rng.integers(2 ** 31)))


# -------------------------------------------------------------------------------------------- CLI
def _dataset_chunk(args):
    revision, seed, start, n, size = args
    use_revision(revision)  # a worker that is not a fork of this process starts at revision 1
    return [(np.asarray(im), c, ids) for im, c, ids in dataset(n, seed, start, size)]


def _recognizer_chunk(args):
    revision, seed, ident, per, size = args
    use_revision(revision)
    return np.stack([np.asarray(recognizer_sample(ident, k, seed, size)) for k in range(per)])


def _pmap(fn, jobs, workers):
    if workers <= 1:
        yield from map(fn, jobs)
    else:
        import multiprocessing as mp
        with mp.Pool(workers) as pool:
            yield from pool.imap(fn, jobs)


def cmd_dataset(a):
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (a.n, a.size, a.size, 3))
    caps, ids, i = [], [], 0
    jobs = [(R.number, a.seed, s, min(500, a.n - s), a.size) for s in range(0, a.n, 500)]
    for chunk in _pmap(_dataset_chunk, jobs, a.workers):
        for im, c, ident in chunk:
            images[i], i = im, i + 1
            caps.append(c); ids.append(ident)
    images.flush()
    (out / "captions.json").write_text(json.dumps(caps, ensure_ascii=False))
    (out / "ids.json").write_text(json.dumps(ids))
    # The captions' names by identity, for the text tower's name term (train.py clip --name-weight).
    (out / "names.json").write_text(json.dumps(celebrity_names(), ensure_ascii=False))
    np.save(out / "labels.npy", np.array([x[0] if len(x) == 1 else -1 for x in ids], np.int64))
    print(f"wrote {a.n} examples to {out}")


def cmd_recognizer(a):
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    n = R.train_people * a.per_person
    images = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (n, a.size, a.size, 3))
    jobs = [(R.number, a.seed, ident, a.per_person, a.size) for ident in range(R.train_people)]
    for ident, block in enumerate(_pmap(_recognizer_chunk, jobs, a.workers)):
        images[ident * a.per_person:(ident + 1) * a.per_person] = block
    images.flush()
    np.save(out / "labels.npy", np.repeat(np.arange(R.train_people, dtype=np.int64), a.per_person))
    print(f"wrote {n} images of {R.train_people} identities to {out}")


def cmd_people(a):
    for i in range(HELD_OUT):
        folder = Path(a.out) / f"heldout_{i}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for k, (img, scene) in enumerate(held_out_photos(i, a.n, a.size)):
            img.save(folder / f"{k}.png")
            lines.append(caption(["a person"], scene))
        (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {HELD_OUT} held-out people to {a.out}")


def preview_image(size: int = 64, zoom: int = 2) -> Image.Image:
    """Rows: 2 celebrities, 2 other training people, 2 held-out people; columns: 8 scenes shared by all rows."""
    rows = [(celebrity_names()[i], person(i)) for i in range(2)] + [(f"person {i}", person(i)) for i in R.unnamed]
    rows += [(f"heldout_{i}", held_out_person(i)) for i in range(2)]
    scenes = []
    for c in range(8):
        rng = np.random.default_rng([99, c])
        s = random_scene(rng, 1, framing="close-up" if c < 5 else ("medium", "wide", "medium")[c - 5])
        scenes.append(Scene(list(BACKGROUNDS)[(c * 5 + 1) % len(BACKGROUNDS)], s.looks, s.template))
    cell, label = size * zoom, 100
    grid = Image.new("RGB", (label + 8 * cell, 6 * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for ri, (name, p) in enumerate(rows):
        draw.text((4, ri * cell + cell // 2 - 6), name, fill=(0, 0, 0))
        for ci, sc in enumerate(scenes):
            grid.paste(render([p], sc, size, seed=ci).resize((cell, cell), Image.NEAREST), (label + ci * cell, ri * cell))
    return grid


def cmd_bench(a):
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample(rng, a.size)  # warm the background cache
    t = time.perf_counter()
    for _ in range(a.n):
        sample(rng, a.size)
    dt = time.perf_counter() - t
    print(f"{a.n / dt:.0f} images/s ({a.size}x{a.size}, one core, sample() incl. caption)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dataset"); p.add_argument("--n", type=int, default=30000); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True); p.add_argument("--workers", type=int, default=1); p.set_defaults(fn=cmd_dataset)
    p = sub.add_parser("recognizer-data"); p.add_argument("--per-person", type=int, default=60)
    p.add_argument("--seed", type=int, default=0); p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1); p.set_defaults(fn=cmd_recognizer)
    p = sub.add_parser("people"); p.add_argument("--out", required=True); p.add_argument("--n", type=int, default=6)
    p.set_defaults(fn=cmd_people)
    p = sub.add_parser("preview"); p.add_argument("--out", required=True)
    p.set_defaults(fn=lambda a: preview_image(a.size).save(a.out))
    p = sub.add_parser("bench"); p.add_argument("--n", type=int, default=1000); p.set_defaults(fn=cmd_bench)
    for p in sub.choices.values():
        p.add_argument("--size", type=int, default=64)
        p.add_argument("--revision", type=int, choices=sorted(REVISIONS), default=1,
                       help="who lives in the world: 1, the committed world's 300 people (40 named); 2, 600 people "
                            "(500 named) and trait words in captions (README.md)")
    a = ap.parse_args(argv)
    use_revision(a.revision)
    a.fn(a)


if __name__ == "__main__":
    main()
