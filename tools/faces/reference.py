"""Reference values for the Rust tests, generated once with onnxruntime and committed.

  /work/refvenv/bin/python tools/faces/reference.py

Writes fixtures/faces/reference/:
  mtcnn.json    the reference MTCNN (mtcnn_ref.py) on every test photo: boxes, scores, landmarks
  facenet.json  FaceNet embeddings (onnxruntime, input (x-127.5)/128 NHWC) of the 160² crops in
                fixtures/faces/crops/ (from the photos in fixtures/faces/photos only), which this script also writes (PNG, so the Rust test feeds
                bit-identical pixels): a box-plus-margin crop around the reference MTCNN's
                largest face, resized with PIL bicubic.
  tiny_arcface.json  the tiny ArcFace-layout model (make_tiny_models.py) on the same crops,
                resized to 112² (NCHW, (x-127.5)/127.5).
"""
import json
import pathlib

import numpy as np
import onnxruntime as ort
from PIL import Image

from mtcnn_ref import MODELS, ROOT, detect, load_mtcnn

SHARED = ROOT.parent / "shared" / "data" / "faces"
FIX = ROOT / "fixtures" / "faces"


def photos():
    """(key, path): keys are 'shared/<set>/<file>' or 'fixtures/<path>'."""
    for sub in ("celeba", "stylegan3"):
        for p in sorted((SHARED / sub).glob("*.jpg")):
            yield f"shared/{sub}/{p.name}", p
    for p in sorted((FIX / "photos").iterdir()):
        yield f"fixtures/photos/{p.name}", p


def main():
    det = load_mtcnn()
    ref = {}
    for key, path in photos():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        ref[key] = detect(det, rgb)
        print(key, len(ref[key]))
    out = FIX / "reference"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mtcnn.json").write_text(json.dumps(ref, indent=1))

    crops = FIX / "crops"
    crops.mkdir(exist_ok=True)
    # Only the public-domain / permissively licensed photos are cut into committed crops.
    chosen = [f"fixtures/photos/{n}" for n in ("grace_hopper.jpg", "astronaut.jpg", "t1.jpg", "Tom_Hanks_54745.png")]
    facenet = ort.InferenceSession(str(MODELS / "facenet" / "facenet_inception_resnet_v1_160.onnx"))
    tiny = ort.InferenceSession(str(FIX / "tiny_arcface.onnx"))
    fn_ref, arc_ref = {}, {}
    for key in chosen:
        path = dict(photos())[key]
        faces = ref[key]
        f = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
        x1, y1, x2, y2 = f["bbox"]
        side = max(x2 - x1, y2 - y1) * 1.3
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        box = tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        crop = Image.open(path).convert("RGB").crop(box).resize((160, 160), Image.BICUBIC)
        name = key.split("/")[-2] + "_" + pathlib.Path(key).stem + "_160.png"
        crop.save(crops / name)
        x = (np.asarray(crop, dtype=np.float32) - 127.5) / 128.0
        e = facenet.run(None, {"input:0": x[None]})[0][0]
        fn_ref[name] = (e / np.linalg.norm(e)).tolist()
        small = np.asarray(crop.resize((112, 112), Image.BICUBIC), dtype=np.float32)
        Image.fromarray(small.astype(np.uint8)).save(crops / name.replace("_160", "_112"))
        xa = ((small - 127.5) / 127.5).transpose(2, 0, 1)[None]
        e = tiny.run(None, {tiny.get_inputs()[0].name: xa})[0][0]
        arc_ref[name.replace("_160", "_112")] = (e / np.linalg.norm(e)).tolist()
    (out / "facenet.json").write_text(json.dumps(fn_ref))
    (out / "tiny_arcface.json").write_text(json.dumps(arc_ref))


if __name__ == "__main__":
    main()
