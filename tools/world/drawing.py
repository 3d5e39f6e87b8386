"""How the world's people and scenes look: identity traits (`person(seed)`), the free variation a caption
describes (`Scene`, `random_scene`), and `render`, which draws them at 4x with Pillow and box-downsamples, so
images are antialiased and a pure function of (people, scene, size, seed). Who is trained on, who is named and
how captions read are `world.py`'s business."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SS = 4  # supersampling factor

# ----------------------------------------------------------------------------------------- palettes
SKIN_STOPS = np.array([(255, 226, 206), (241, 196, 160), (215, 160, 118), (178, 120, 80),
                       (130, 82, 52), (84, 54, 36)], float)
HAIR_COLOURS = {"black": ((28, 22, 22), .24), "dark brown": ((72, 46, 30), .2), "brown": ((118, 76, 42), .14),
                "blond": ((228, 192, 112), .13), "red": ((176, 72, 30), .08), "grey": ((150, 150, 152), .08),
                "white": ((236, 236, 230), .04), "light brown": ((160, 115, 70), .05),
                "blue": ((50, 90, 215), .02), "pink": ((235, 110, 175), .02)}
HAIR_STYLES = {"short": .15, "long": .13, "curly": .1, "bald": .07, "bun": .07, "side part": .12,
               "mohawk": .04, "ponytail": .1, "afro": .06, "bob": .09, "buzz": .07}
EYE_COLOURS = {"brown": ((112, 62, 24), .28), "dark brown": ((58, 34, 20), .22), "blue": ((40, 115, 230), .16),
               "green": ((40, 160, 70), .1), "hazel": ((150, 115, 40), .1), "grey": ((135, 150, 165), .08),
               "amber": ((210, 140, 20), .06)}
LIPS = [(196, 84, 92), (172, 92, 80), (206, 104, 118), (150, 72, 62), (185, 60, 70)]
FACIAL_HAIR = {"none": .7, "stubble": .1, "moustache": .07, "beard": .09, "goatee": .04}
CLOTHES = ["t-shirt", "sweater", "jacket", "suit", "hoodie", "dress shirt"]
COLOURS = {"red": (205, 32, 42), "blue": (40, 80, 205), "green": (40, 150, 60), "yellow": (240, 210, 40),
           "black": (28, 28, 32), "white": (240, 240, 240), "purple": (120, 50, 170), "orange": (242, 130, 30),
           "pink": (242, 140, 182), "grey": (128, 128, 134)}
ACCESSORIES = ["hat", "glasses", "sunglasses", "scarf", "earrings", "headphones"]  # caption order
MILD_ACCESSORIES = ["glasses", "earrings", "scarf"]
EXPRESSIONS = {"neutral": .2, "smiling": .2, "laughing": .12, "eyes closed": .12, "surprised": .12,
               "sad": .12, "angry": .12}
# framing -> (probability, head-radius range as a fraction of the image, caption prefixes)
FRAMINGS = {"close-up": (.55, (.20, .24), ("a close-up photo of", "a close-up picture of", "a close-up portrait of")),
            "medium": (.3, (.145, .175), ("a photo of", "a picture of", "a portrait of")),
            "wide": (.15, (.10, .12), ("a wide photo of", "a wide picture of", "a wide shot of"))}
ACCENTS = [(120, 80, 45), (30, 30, 35), (35, 50, 110), (210, 190, 150), (150, 30, 40), (60, 110, 70)]


def _mix(a, b, t):
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _choice(rng, weights: dict):
    names = list(weights)
    p = np.array([w[1] if isinstance(w, tuple) else w for w in weights.values()], float)  # (value, weight) or weight
    return names[int(rng.choice(len(names), p=p / p.sum()))]


# ------------------------------------------------------------------------------------ data classes
@dataclass(frozen=True)
class Person:
    """Identity traits; lengths are in units of the head radius (face half-width is ~0.9)."""
    seed: int
    face_w: float; face_h: float; jaw: float; chin: float
    skin: tuple; hair_style: str; hair_colour_name: str; hair: tuple; side: int
    eye_colour_name: str; eye: tuple; eye_spacing: float; eye_size: float
    brow_thick: float; brow_angle: float; nose_len: float; nose_w: float
    mouth_w: float; lip: tuple; ear: float
    mole: tuple | None; freckles: bool; scar: tuple | None; facial_hair: str


@dataclass(frozen=True)
class Pose:
    framing: str  # close-up / medium / wide / pair
    dx: float; dy: float; tilt: float; scale: float  # offsets and head radius as fractions of the image


@dataclass(frozen=True)
class Look:
    """What one subject wears and does in one picture (all of it described by the caption)."""
    clothing: str; colour: str; accessories: tuple; expression: str; pose: Pose; accent: tuple


@dataclass(frozen=True)
class Scene:
    background: str
    looks: tuple  # one Look per subject, left to right
    template: int  # picks the caption wording, so caption() is a pure function


@lru_cache(maxsize=4096)
def person(seed: int) -> Person:
    """Samples identity traits with wide spread so different seeds look clearly different."""
    r = np.random.default_rng([11, seed])
    u = lambda lo, hi: float(r.uniform(lo, hi))
    tone = u(0, 5)  # one continuous position along the light-to-dark palette
    skin = tuple(int(np.interp(tone, range(6), SKIN_STOPS[:, c])) for c in range(3))
    style, hair_name = _choice(r, HAIR_STYLES), _choice(r, HAIR_COLOURS)
    hair = _mix(HAIR_COLOURS[hair_name][0], tuple(int(v) for v in r.integers(0, 256, 3)), u(0, .12))
    eye_name = _choice(r, EYE_COLOURS)
    face_w, face_h = u(.78, .98), u(1.0, 1.22)
    mole = (u(-.6, .6) * face_w, u(.1, .7)) if r.random() < .35 else None
    freckles = bool(r.random() < .15)
    scar = (float(r.choice([-1, 1])), u(-.1, .35)) if r.random() < .1 else None
    return Person(seed, face_w, face_h, u(1.8, 3.4), u(0, .4), skin, style, hair_name, hair,
                  int(r.choice([-1, 1])), eye_name, EYE_COLOURS[eye_name][0], u(.3, .44), u(.15, .22),
                  u(.035, .1), u(-.08, .1), u(.26, .42), u(.13, .26), u(.2, .36), LIPS[int(r.integers(len(LIPS)))],
                  u(.13, .22), mole, freckles, scar, _choice(r, FACIAL_HAIR))


# ---------------------------------------------------------------------------------------- geometry
class _Frame:
    """Maps head-local coordinates (units of head radius, y down) to canvas pixels, with head tilt."""

    def __init__(self, cx, cy, r, tilt=0.0):
        a = math.radians(tilt)
        self.cx, self.cy, self.r, self.c, self.s = cx, cy, r, math.cos(a), math.sin(a)

    def pts(self, uv):
        uv = np.asarray(uv, float).reshape(-1, 2)
        x = self.cx + self.r * (uv[:, 0] * self.c - uv[:, 1] * self.s)
        y = self.cy + self.r * (uv[:, 0] * self.s + uv[:, 1] * self.c)
        return np.column_stack([x, y]).ravel().tolist()

    def box(self, u, v, ru, rv=None):
        x, y = self.pts([(u, v)])
        rv = ru if rv is None else rv
        return [x - ru * self.r, y - rv * self.r, x + ru * self.r, y + rv * self.r]

    def w(self, t):
        return max(1, int(round(t * self.r)))


def _ell(a, b, th0, th1, n, cu=0.0, cv=0.0):
    th = np.linspace(th0, th1, n)
    return np.column_stack([cu + a * np.cos(th), cv + b * np.sin(th)])


def _curve(u0, u1, v, bend, n=9):
    """A parabola from u0 to u1 whose middle sits `bend` below the ends (bend>0: smile shape)."""
    t = np.linspace(-1, 1, n)
    return np.column_stack([np.linspace(u0, u1, n), v + bend * (1 - t * t)])


def _face_outline(p, n=48):
    """Ellipse on top, superellipse (square or round jaw) pinched towards a pointy chin below."""
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(th), np.sin(th)
    x, y = p.face_w * c, p.face_h * s
    lo, e = s > 0, 2.0 / p.jaw
    x[lo] = p.face_w * np.sign(c[lo]) * np.abs(c[lo]) ** e * (1 - p.chin * s[lo] ** 2)
    y[lo] = p.face_h * np.abs(s[lo]) ** e
    return np.column_stack([x, y])


def _mouth_v(p):
    return p.nose_len + .17 + (p.face_h - 1.0) * .35


# ------------------------------------------------------------------------------------------- hair
def _cap(p, margin, drop, hairline, temple, skew=0.0):
    """Hair covering the top of the head, down to a hairline across the forehead."""
    a, b = p.face_w + margin, p.face_h + margin * 1.2
    outer = _ell(a, b, np.pi - drop, 2 * np.pi + drop, 15)
    t = np.linspace(1, -1, 11)
    v = (hairline + skew * t) * p.face_h * (1 - t ** 4) + temple * t ** 4
    return np.vstack([outer, np.column_stack([t * p.face_w * .98, v])])


# style -> cap(margin, drop, hairline, temple); None = no cap
CAPS = {"short": (.08, .05, -.58, -.2), "buzz": (.03, 0, -.62, -.25), "long": (.1, .15, -.5, -.1),
        "curly": (.12, .15, -.5, -.1), "bun": (.06, .05, -.6, -.2), "side part": (.1, .1, -.55, -.15),
        "mohawk": (.02, 0, -.62, -.25), "ponytail": (.05, 0, -.62, -.2), "afro": (.2, .2, -.55, -.1),
        "bob": (.14, .3, -.4, -.05), "bald": None}


def _hair_back(d, p, T):
    """Hair that sits behind the head and shoulders."""
    fw, fh, st, col = p.face_w, p.face_h, p.hair_style, p.hair
    if st in ("long", "bob"):
        w, bot = (fw + .3, 1.7) if st == "long" else (fw + .2, .6)
        d.polygon(T.pts(np.vstack([_ell(fw + .22, fh + .2, np.pi, 2 * np.pi, 12), [(w, bot), (-w, bot)]])), fill=col)
    elif st == "afro":
        d.ellipse(T.box(0, -.25, fw + .55, fh + .45), fill=col)
    elif st == "curly":
        for u, v in _ell(fw + .12, fh + .1, np.pi - .6, 2 * np.pi + .6, 12):
            d.ellipse(T.box(u, v, .25), fill=col)
    elif st == "ponytail":
        s = p.side
        d.polygon(T.pts([(s * fw * .5, -fh * .8), (s * (fw + .45), .1), (s * (fw + .4), 1.2),
                         (s * (fw + .12), 1.0), (s * fw * .7, -.1)]), fill=col)


def _hair_front(d, p, T):
    fw, fh, st, col = p.face_w, p.face_h, p.hair_style, p.hair
    dark = _mix(col, (0, 0, 0), .35)
    if st == "buzz":
        col = _mix(col, p.skin, .3)
    if st == "mohawk":  # shaved sides, then a tall strip
        d.polygon(T.pts(_cap(p, *CAPS[st])), fill=_mix(p.skin, col, .35))
        d.polygon(T.pts([(-.18, -fh * .55), (-.22, -fh - .3), (0, -fh - .55), (.22, -fh - .3), (.18, -fh * .55)]),
                  fill=col)
        return
    if CAPS[st] is None:  # bald: side fringe and a shine
        for s in (-1, 1):
            d.polygon(T.pts([(s * fw * .96, -.38), (s * (fw + .07), -.32), (s * (fw + .06), .04), (s * fw * .97, .04)]),
                      fill=col)
        d.ellipse(T.box(-.22, -fh * .72, .18, .08), fill=_mix(p.skin, (255, 255, 255), .3))
        return
    skew = .22 * p.side if st == "side part" else 0.0
    cap = _cap(p, *CAPS[st], skew=skew)
    d.polygon(T.pts(cap), fill=col)
    if st == "side part":
        u = -.35 * p.side * fw
        d.line(T.pts([(u, -fh * .7), (u * .8, -fh - .05)]), fill=dark, width=T.w(.04))
    elif st == "long":
        for s in (-1, 1):
            d.polygon(T.pts([(s * fw * .86, -.3), (s * (fw + .2), -.35), (s * (fw + .36), 1.5),
                             (s * (fw + .04), 1.5), (s * fw * .96, .5)]), fill=col)
    elif st == "curly":
        for u, v in cap[15::2]:
            d.ellipse(T.box(u, v, .11), fill=col)
    elif st == "bun":
        d.ellipse(T.box(0, -fh - .22, .3), fill=col)
        d.arc(T.box(0, -fh - .22, .3), 20, 160, fill=dark, width=T.w(.04))
    elif st == "ponytail":
        d.line(T.pts([(p.side * fw * .75, -fh * .6), (p.side * fw * .95, -.2)]), fill=dark, width=T.w(.05))


def _hair_top(p):
    """Height of the hair above the face, for hats and headphone bands."""
    return {"afro": .55, "bun": .45, "mohawk": .5, "curly": .3, "bald": .0, "buzz": .04}.get(p.hair_style, .14)


# -------------------------------------------------------------------------------------------- face
def _face(d, p, T, expr):
    skin, fw = p.skin, p.face_w
    shade = _mix(skin, (0, 0, 0), .2)
    for s in (-1, 1):  # ears behind the face edge
        d.ellipse(T.box(s * fw * .97, .02, p.ear * .55, p.ear), fill=skin, outline=shade, width=T.w(.02))
    outline = _face_outline(p)
    d.polygon(T.pts(outline), fill=skin)
    if p.freckles:
        fr = np.random.default_rng([5, p.seed])
        for _ in range(16):
            u, v = fr.uniform(.12, .55) * fr.choice([-1, 1]), fr.uniform(.08, .35)
            d.ellipse(T.box(u, v, .028), fill=_mix(skin, (120, 60, 30), .5))
    if p.mole:
        d.ellipse(T.box(*p.mole, .06), fill=(58, 34, 24))
    if p.scar:
        su, sv = p.scar
        d.line(T.pts([(su * .35, sv - .12), (su * .55, sv + .14)]), fill=_mix(skin, (160, 40, 50), .55),
               width=T.w(.035))
    _facial_hair(d, p, T, outline)
    _eyes(d, p, T, expr)
    _brows(d, p, T, expr)
    d.polygon(T.pts([(0, .04), (-p.nose_w * .55, p.nose_len), (p.nose_w * .55, p.nose_len)]),
              fill=_mix(skin, (0, 0, 0), .13))
    for s in (-1, 1):
        d.ellipse(T.box(s * p.nose_w * .3, p.nose_len - .015, .035), fill=_mix(skin, (0, 0, 0), .45))
    _mouth(d, p, T, expr)


def _facial_hair(d, p, T, outline):
    fh, mv, mw, kind = p.face_h, _mouth_v(p), p.mouth_w, p.facial_hair
    if kind in ("beard", "stubble"):
        lower = outline[outline[:, 1] > (mv - .12 if kind == "beard" else mv - .05)]
        col = p.hair if kind == "beard" else _mix(p.skin, p.hair, .3)
        d.polygon(T.pts(lower * [1.03, 1.04]), fill=col)
    if kind in ("beard", "moustache", "goatee"):
        d.polygon(T.pts([(-mw - .04, mv + .02), (-mw * .6, mv - .09), (0, mv - .1), (mw * .6, mv - .09),
                         (mw + .04, mv + .02), (0, mv - .04)]), fill=p.hair)
    if kind == "goatee":
        d.ellipse(T.box(0, min(mv + .2, fh - .12), .13, .12), fill=p.hair)


def _eyes(d, p, T, expr):
    ex, ey = p.eye_size, p.eye_size * .62
    line = (40, 28, 24)
    if expr == "surprised":
        ex, ey = ex * 1.1, ey * 1.35
    elif expr == "angry":
        ey *= .75
    for s in (-1, 1):
        u, v = s * p.eye_spacing, -.02
        if expr in ("eyes closed", "laughing"):  # closed lids: a downward or (laughing) upward arc
            bend = ey * .6 if expr == "eyes closed" else -ey * .8
            d.line(T.pts(_curve(u - ex, u + ex, v, bend)), fill=line, width=T.w(.045), joint="curve")
            continue
        d.ellipse(T.box(u, v, ex, ey), fill=(250, 250, 248), outline=line, width=T.w(.03))
        ir = min(ey * .95, ex * .62) * (.8 if expr == "surprised" else 1)
        d.ellipse(T.box(u, v + .005, ir), fill=p.eye)
        d.ellipse(T.box(u, v + .005, ir * .45), fill=(12, 12, 14))
        d.line(T.pts(_curve(u - ex, u + ex, v - ey * .55, -ey * .45, 7)), fill=line, width=T.w(.045))


def _brows(d, p, T, expr):
    lift = {"surprised": -.09, "angry": .0, "sad": .0}.get(expr, 0.0)
    inner = {"angry": .09, "sad": -.08}.get(expr, 0.0)
    v = -.02 - p.eye_size * .62 - .11 + lift
    for s in (-1, 1):
        a, b = p.eye_spacing - p.eye_size * .9, p.eye_spacing + p.eye_size * 1.15
        pts = [(s * a, v + inner), (s * (a + b) / 2, v - .035), (s * b, v + p.brow_angle)]
        d.line(T.pts(pts), fill=_mix(p.hair, (20, 15, 15), .55), width=T.w(p.brow_thick), joint="curve")


def _mouth(d, p, T, expr):
    mv, mw, lip = _mouth_v(p), p.mouth_w, p.lip
    w = T.w(.06)
    if expr == "laughing":
        shape = np.vstack([_curve(-mw, mw, mv - .03, .04), _curve(mw, -mw, mv, .24)])
        d.polygon(T.pts(shape), fill=(110, 24, 36), outline=lip, width=T.w(.03))
        d.polygon(T.pts(np.vstack([_curve(-mw * .8, mw * .8, mv - .01, .04), _curve(mw * .7, -mw * .7, mv + .04, .03)])),
                  fill=(248, 248, 240))
    elif expr == "surprised":
        d.ellipse(T.box(0, mv + .04, .09, .12), fill=(100, 24, 34), outline=lip, width=T.w(.03))
    else:
        bend = {"smiling": .11, "eyes closed": .05, "sad": -.08, "angry": -.05}.get(expr, .0)
        width = mw * (.8 if expr == "angry" else 1)
        d.line(T.pts(_curve(-width, width, mv, bend)), fill=lip, width=w, joint="curve")


# ------------------------------------------------------------------------------------------- body
def _body(d, p, look, B):
    """Neck, shoulders and clothing (untilted: the head tilts, the body does not)."""
    fh, col = p.face_h, COLOURS[look.colour]
    dark, light = _mix(col, (0, 0, 0), .3), _mix(col, (255, 255, 255), .35)
    vs = fh + .42
    d.rectangle(B.box(0, (fh * .5 + vs) / 2, .3, (vs - fh * .5) / 2 + .05), fill=_mix(p.skin, (0, 0, 0), .12))
    shoulders = np.vstack([[(-.4, vs - .05)], _ell(.6, .55, np.pi * 1.5, np.pi, 6, -1.35, vs + .5),
                           [(-1.95, 6), (1.95, 6)], _ell(.6, .55, 0, -np.pi * .5, 6, 1.35, vs + .5), [(.4, vs - .05)]])
    d.polygon(B.pts(shoulders), fill=col)
    kind, neck = look.clothing, _mix(p.skin, (0, 0, 0), .12)
    if kind in ("t-shirt", "sweater"):
        d.pieslice(B.box(0, vs - .1, .42, .3), 0, 180, fill=dark if kind == "sweater" else col)
        d.pieslice(B.box(0, vs - .12, .34, .22 if kind == "sweater" else .26), 0, 180, fill=neck)
        if kind == "sweater":
            for v in (vs + .7, vs + .85):
                d.line(B.pts([(-1.9, v), (1.9, v)]), fill=dark, width=B.w(.03))
    elif kind in ("jacket", "suit"):
        inner = (245, 245, 245) if kind == "suit" else (60, 60, 66)
        d.polygon(B.pts([(-.4, vs - .06), (.4, vs - .06), (0, vs + .95)]), fill=inner)
        for s in (-1, 1):
            d.line(B.pts([(s * .4, vs - .06), (s * .1, vs + .95), (s * .05, 4)]), fill=dark, width=B.w(.05))
        if kind == "suit":
            tie = (30, 30, 34) if look.colour != "black" else (150, 20, 30)
            d.polygon(B.pts([(-.07, vs + .05), (.07, vs + .05), (.1, vs + .75), (0, vs + .88), (-.1, vs + .75)]),
                      fill=tie)
    elif kind == "hoodie":
        d.pieslice(B.box(0, vs - .05, .62, .42), 0, 180, fill=dark)
        d.pieslice(B.box(0, vs - .1, .36, .24), 0, 180, fill=neck)
        for s in (-1, 1):
            d.line(B.pts([(s * .18, vs + .15), (s * .2, vs + .7)]), fill=light, width=B.w(.04))
    elif kind == "dress shirt":
        d.pieslice(B.box(0, vs - .12, .3, .22), 0, 180, fill=neck)
        for s in (-1, 1):
            d.polygon(B.pts([(s * .02, vs + .12), (s * .38, vs - .1), (s * .34, vs + .22)]), fill=light, outline=dark)
        for k in range(4):
            d.ellipse(B.box(0, vs + .3 + k * .22, .035), fill=dark)


def _accessories(d, p, look, T, B):
    fw, fh, acc, ac = p.face_w, p.face_h, look.accessories, look.accent
    ex, ey, dark = p.eye_size, p.eye_size * .62, (25, 25, 30)
    if "scarf" in acc:
        vs = fh + .42
        d.polygon(B.pts(np.vstack([_ell(.62, .2, np.pi, 0, 8, 0, vs - .12), _ell(.5, .16, 0, np.pi, 8, 0, vs - .1)])),
                  fill=ac)
        d.polygon(B.pts([(.15, vs), (.42, vs), (.5, vs + .8), (.25, vs + .8)]), fill=_mix(ac, (0, 0, 0), .2))
    for kind, fill in (("sunglasses", dark), ("glasses", None)):
        if kind in acc:
            for s in (-1, 1):
                d.ellipse(T.box(s * p.eye_spacing, -.02, ex * 1.35, ey * 1.9), fill=fill, outline=dark, width=T.w(.045))
            a = p.eye_spacing - ex * 1.35
            d.line(T.pts([(-a, -.05), (a, -.05)]), fill=dark, width=T.w(.045))
            for s in (-1, 1):
                d.line(T.pts([(s * (a + ex * 2.7), -.05), (s * fw, -.08)]), fill=dark, width=T.w(.045))
    if "earrings" in acc:
        for s in (-1, 1):
            d.ellipse(T.box(s * (fw + .01), .02 + p.ear * 1.05, .065), fill=(235, 195, 60))
    top = -fh - _hair_top(p)
    if "headphones" in acc:
        d.line(T.pts(_ell(fw + .16, -top + .12, np.pi, 2 * np.pi, 11)), fill=dark, width=T.w(.09), joint="curve")
        for s in (-1, 1):
            d.ellipse(T.box(s * (fw + .1), 0, .14, .24), fill=ac, outline=dark, width=T.w(.04))
    if "hat" in acc:
        brim = -fh * .5 - .05
        d.polygon(T.pts([(-fw * .82, brim), (-fw * .7, top - .28), (fw * .7, top - .28), (fw * .82, brim)]), fill=ac)
        d.polygon(T.pts([(-fw * .82, brim - .02), (fw * .82, brim - .02), (fw * .81, brim - .15), (-fw * .81, brim - .15)]),
                  fill=_mix(ac, (0, 0, 0), .45))
        d.polygon(T.pts([(-fw - .42, brim), (fw + .42, brim), (fw + .3, brim + .09), (-fw - .3, brim + .09)]),
                  fill=_mix(ac, (0, 0, 0), .15))


def _draw_person(d, p, look, cx, cy, r):
    T, B = _Frame(cx, cy, r, look.pose.tilt), _Frame(cx, cy, r)
    _hair_back(d, p, T)
    _body(d, p, look, B)
    _face(d, p, T, look.expression)
    _hair_front(d, p, T)
    _accessories(d, p, look, T, B)


# ------------------------------------------------------------------------------------- backgrounds
BACKGROUNDS = {  # name -> (caption phrase, top colour, bottom colour)
    "beach": ("on a beach", (110, 175, 235), (195, 228, 250)), "forest": ("in a forest", (40, 90, 45), (25, 60, 30)),
    "city": ("in a city", (165, 185, 210), (215, 222, 232)), "snow": ("in the snow", (190, 202, 220), (228, 234, 242)),
    "night": ("at night", (8, 12, 40), (30, 40, 90)), "desert": ("in a desert", (238, 180, 110), (250, 225, 170)),
    "office": ("in an office", (222, 220, 210), (200, 198, 188)),
    "mountain": ("in the mountains", (100, 160, 225), (190, 220, 245)),
    "library": ("in a library", (80, 50, 28), (60, 36, 20)), "kitchen": ("in a kitchen", (238, 236, 226), (225, 222, 210)),
    "park": ("in a park", (130, 190, 240), (200, 230, 250)), "underwater": ("underwater", (20, 150, 175), (8, 45, 100)),
    "space": ("in space", (2, 2, 10), (18, 8, 32)),
}
N_VARIANTS = 6


def _rect(d, S, x0, y0, x1, y1, fill):
    d.rectangle([x0 * S, y0 * S, x1 * S, y1 * S], fill=fill)


def _poly(d, S, pts, fill):
    d.polygon([(x * S, y * S) for x, y in pts], fill=fill)


def _circle(d, S, x, y, r, fill=None, outline=None, width=1):
    d.ellipse([(x - r) * S, (y - r) * S, (x + r) * S, (y + r) * S], fill=fill, outline=outline, width=width)


def _paint_background(name, d, r, S):
    """Recognisable scenery from a few shapes; it fills the frame edges the people leave free."""
    U = r.uniform
    if name == "beach":
        _circle(d, S, U(.1, .9), U(.08, .2), .07, (255, 230, 90))
        _rect(d, S, 0, .5, 1, .7, (30, 110, 185))
        for y in (.56, .63):
            _rect(d, S, 0, y, 1, y + .012, (120, 180, 225))
        _rect(d, S, 0, .7, 1, 1, (232, 208, 150))
        x = U(.0, .1) if r.random() < .5 else U(.85, .95)  # a palm tree
        _poly(d, S, [(x - .02, 1), (x + .03, .42), (x + .05, .42), (x + .02, 1)], (120, 85, 45))
        for dx, dy in ((-.13, .06), (.13, .06), (-.09, -.04), (.09, -.04)):
            _poly(d, S, [(x + .04, .4), (x + .04 + dx, .42 + dy), (x + .04 + dx * .6, .4 + dy * .3)], (40, 130, 50))
    elif name in ("forest", "park"):
        if name == "park":
            _rect(d, S, 0, .6, 1, 1, (105, 180, 70))
            _poly(d, S, [(.45, .6), (.55, .6), (.8, 1), (.2, 1)], (215, 200, 160))
        n = 9 if name == "forest" else 3
        for _ in range(n):
            x, w = U(0, 1), U(.04, .08)
            top = U(.05, .35) if name == "forest" else U(.25, .4)
            _rect(d, S, x - w / 2, top, x + w / 2, 1 if name == "forest" else .7, (92, 60, 35))
            green = (int(U(30, 80)), int(U(100, 160)), int(U(30, 70)))
            _circle(d, S, x, top, U(.1, .16), green)
        if name == "forest":
            _rect(d, S, 0, .88, 1, 1, (60, 80, 35))
    elif name == "city":
        x = -.05
        while x < 1:
            w, top, g = U(.12, .22), U(.1, .45), int(U(85, 150))
            _rect(d, S, x, top, x + w, 1, (g, g, g + 8))
            for wy in np.arange(top + .04, .95, .07):
                for wx in np.arange(x + .025, x + w - .03, .05):
                    _rect(d, S, wx, wy, wx + .025, wy + .035, (235, 220, 140) if r.random() < .6 else (60, 65, 80))
            x += w + U(0, .03)
    elif name == "snow":
        _poly(d, S, [(0, .62), (.5, .58), (1, .64), (1, 1), (0, 1)], (246, 248, 252))
        for _ in range(4):
            x, h = U(0, 1), U(.15, .3)
            _poly(d, S, [(x - .08, .62), (x, .62 - h), (x + .08, .62)], (30, 80, 50))
            _poly(d, S, [(x - .035, .62 - h * .55), (x, .62 - h), (x + .035, .62 - h * .55)], (250, 250, 255))
    elif name in ("night", "space"):
        for _ in range(70 if name == "space" else 45):
            _circle(d, S, U(0, 1), U(0, 1 if name == "space" else .7), U(.004, .009), (255, 255, int(U(190, 255))))
        if name == "night":
            x, y = U(.1, .9), U(.08, .2)
            _circle(d, S, x, y, .08, (245, 240, 200))
            _circle(d, S, x + .04, y - .02, .07, (12, 17, 48))
            _poly(d, S, [(0, .85)] + [(t, .85 - U(0, .12)) for t in np.linspace(0, 1, 12)] + [(1, 1), (0, 1)], (5, 8, 15))
        else:
            x, y, rr = U(.1, .9), U(.1, .3), U(.07, .11)
            col = [(230, 140, 60), (160, 90, 200), (90, 160, 220)][int(r.integers(3))]
            d.ellipse([(x - rr * 1.9) * S, (y - rr * .45) * S, (x + rr * 1.9) * S, (y + rr * .45) * S],
                      outline=(210, 200, 170), width=max(1, S // 90))
            _circle(d, S, x, y, rr, col)
    elif name == "desert":
        _circle(d, S, U(.1, .9), U(.08, .2), .08, (255, 245, 200))
        _poly(d, S, [(0, .6), (.3, .52), (.7, .62), (1, .55), (1, 1), (0, 1)], (222, 172, 100))
        _poly(d, S, [(0, .78), (.5, .7), (1, .8), (1, 1), (0, 1)], (200, 145, 80))
        x = U(.05, .2) if r.random() < .5 else U(.8, .95)
        _rect(d, S, x - .025, .45, x + .025, .8, (60, 130, 60))
        _rect(d, S, x - .08, .55, x - .025, .58, (60, 130, 60))
        _rect(d, S, x - .08, .48, x - .055, .58, (60, 130, 60))
    elif name == "office":
        x = U(.0, .1) if r.random() < .5 else U(.6, .7)
        _rect(d, S, x, .08, x + .32, .5, (245, 245, 245))
        for i in range(2):
            for j in range(2):
                _rect(d, S, x + .02 + i * .15, .1 + j * .2, x + .15 + i * .15, .28 + j * .2, (160, 205, 240))
        _rect(d, S, 0, .8, 1, 1, (125, 90, 60))
        mx = .05 if x > .5 else .72
        _rect(d, S, mx, .6, mx + .22, .78, (30, 30, 35))
        _rect(d, S, mx + .015, .615, mx + .205, .765, (80, 140, 220))
        _rect(d, S, mx + .09, .78, mx + .13, .8, (30, 30, 35))
    elif name == "mountain":
        for (x, h, c) in ((U(.1, .4), .55, (150, 160, 185)), (U(.6, .9), .5, (135, 145, 170)), (U(.3, .7), .4, (110, 115, 135))):
            top = .75 - h
            _poly(d, S, [(x - .45, .78), (x, top), (x + .45, .78)], c)
            _poly(d, S, [(x - .1, top + .12), (x, top), (x + .1, top + .12)], (250, 250, 255))
        _rect(d, S, 0, .78, 1, 1, (80, 140, 65))
    elif name == "library":
        for y in np.arange(.0, 1, .25):
            _rect(d, S, 0, y + .22, 1, y + .25, (130, 85, 45))
            x = 0.0
            while x < 1:
                w, h = U(.025, .05), U(.13, .19)
                col = [(150, 40, 40), (40, 90, 50), (40, 60, 130), (170, 130, 60), (90, 50, 100), (200, 190, 160)]
                _rect(d, S, x, y + .22 - h, x + w - .005, y + .22, col[int(r.integers(len(col)))])
                x += w
    elif name == "kitchen":
        for y in np.arange(.4, .78, .08):
            _rect(d, S, 0, y, 1, y + .006, (200, 200, 192))
        for x in np.arange(0, 1, .08):
            _rect(d, S, x, .4, x + .006, .78, (200, 200, 192))
        for x in np.arange(0, 1, .25):
            _rect(d, S, x + .01, 0, x + .24, .32, (175, 122, 70))
            _rect(d, S, x + .11, .26, x + .14, .28, (60, 60, 60))
        _rect(d, S, 0, .78, 1, .82, (80, 80, 88))
        _rect(d, S, 0, .82, 1, 1, (175, 122, 70))
        x = U(.05, .85)
        _rect(d, S, x, .66, x + .12, .78, (200, 40, 40))
    elif name == "underwater":
        for _ in range(3):
            x = U(0, 1)
            _poly(d, S, [(x, 0), (x + .08, 0), (x - .1, 1), (x - .22, 1)], (40, 170, 195))
        _rect(d, S, 0, .9, 1, 1, (200, 185, 130))
        for _ in range(5):
            x = U(0, 1)
            _poly(d, S, [(x + .02 * np.sin(t * 9), t) for t in np.linspace(.45, .95, 8)] +
                  [(x + .035 + .02 * np.sin(t * 9), t) for t in np.linspace(.95, .45, 8)], (40, 140, 60))
        for _ in range(2):
            x, y = U(.05, .9), U(.1, .5)
            _poly(d, S, [(x - .04, y - .025), (x - .04, y + .025), (x - .01, y)], (250, 140, 30))
            _circle(d, S, x + .02, y, .03, (250, 140, 30))


@lru_cache(maxsize=256)
def _background(name, variant, S):
    """Cached: a handful of variants per scene keeps rendering fast and still varied."""
    top, bottom = np.array(BACKGROUNDS[name][1], float), np.array(BACKGROUNDS[name][2], float)
    t = np.linspace(0, 1, S)[:, None, None]
    grad = np.broadcast_to((top + (bottom - top) * t).astype(np.uint8), (S, S, 3))
    img = Image.fromarray(np.ascontiguousarray(grad), "RGB")
    _paint_background(name, ImageDraw.Draw(img), np.random.default_rng([13, list(BACKGROUNDS).index(name), variant]), S)
    return img


def _foreground(name, d, r, S):
    """Snowflakes and bubbles in front of the people, so those scenes stay recognisable in close-ups."""
    if name == "snow":
        for _ in range(40):
            _circle(d, S, r.uniform(0, 1), r.uniform(0, 1), r.uniform(.006, .012), (255, 255, 255))
    elif name == "underwater":
        for _ in range(8):
            _circle(d, S, r.uniform(0, 1), r.uniform(0, 1), r.uniform(.012, .025), outline=(210, 240, 255),
                    width=max(1, S // 100))


# ------------------------------------------------------------------------------------------ render
def _placement(look, i, n, S):
    """Head centre and radius in canvas pixels; the head sits a bit above centre to leave room for shoulders."""
    p = look.pose
    r = p.scale * S
    cx = S * ((.5 if n == 1 else (.29, .71)[i]) + p.dx)
    return cx, S * (.5 + p.dy) - r * .35, r


def render(people, scene: Scene, size: int = 64, seed: int = 0) -> Image.Image:
    """RGB image of `people` (left to right) in `scene`; identical inputs give identical bytes."""
    S = size * SS
    rng = np.random.default_rng(seed)
    img = _background(scene.background, int(rng.integers(N_VARIANTS)), S).copy()
    d = ImageDraw.Draw(img)
    n = len(people)
    for i, (p, look) in enumerate(zip(people, scene.looks)):
        _draw_person(d, p, look, *_placement(look, i, n, S))
    _foreground(scene.background, d, rng, S)
    return img.resize((size, size), Image.BOX)


# ----------------------------------------------------------------------------------------- scenes
def random_look(rng, n_people=1, mild=False, framing=None) -> Look:
    """Clothing, accessories, expression and pose; `mild` keeps accessories that hide little of the face."""
    U = lambda lo, hi: float(rng.uniform(lo, hi))
    clothing, colour = CLOTHES[int(rng.integers(len(CLOTHES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
    pool = MILD_ACCESSORIES if mild else ACCESSORIES
    k = int(rng.choice(2, p=[.65, .35])) if mild else int(rng.choice(3, p=[.5, .35, .15]))
    acc = {pool[int(i)] for i in rng.choice(len(pool), k, replace=False)}
    if {"glasses", "sunglasses"} <= acc:
        acc.discard("glasses")
    expression = _choice(rng, EXPRESSIONS)
    if n_people == 1:
        framing = framing or _choice(rng, {f: v[0] for f, v in FRAMINGS.items()})
        scale = U(*FRAMINGS[framing][1])
        jitter = .04 + (.24 - scale) * 1.2
        pose = Pose(framing, U(-jitter, jitter), U(-.04, .04), U(-12, 12), scale)
    else:
        pose = Pose("pair", U(-.03, .03), U(-.03, .05), U(-10, 10), U(.1, .13))
    return Look(clothing, colour, tuple(a for a in ACCESSORIES if a in acc), expression, pose,
                ACCENTS[int(rng.integers(len(ACCENTS)))])


def random_scene(rng, n_people=1, mild=False, framing=None) -> Scene:
    bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    looks = tuple(random_look(rng, n_people, mild, framing) for _ in range(n_people))
    return Scene(bg, looks, int(rng.integers(9)))
