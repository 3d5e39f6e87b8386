"""Tiny generated ONNX graphs that stand in for models nothing here ships.

  /work/refvenv/bin/python tools/faces/make_tiny_models.py

Writes fixtures/faces/:
  tiny_scrfd.onnx      SCRFD-shaped detector: input [1,3,H,W] (symbolic H, W like det_10g), 9
                       outputs in insightface's order (scores 8/16/32, boxes 8/16/32, keypoints
                       8/16/32), each [rows, C] with 2 anchors per location, anchor-fastest. Each
                       level is AveragePool(stride) -> 1x1 Conv -> (Sigmoid for scores) ->
                       NCHW->NHWC -> reshape, i.e. SCRFD's real head layout, with fixed seeded
                       weights so bright blobs score high.
  scrfd_input.png      640x480 test image (dark background, bright squares).
  reference/scrfd.json the detections insightface's decoding gives for that image: letterbox,
                       onnxruntime, distance2bbox / distance2kps, score >= 0.5, NMS 0.4 — written
                       out below following insightface/model_zoo/scrfd.py.
  tiny_arcface.onnx    ArcFace-layout recogniser: input [N,3,112,112] -> 32-d (Conv 16x16/16,
                       Relu, Flatten, Gemm), seeded weights.
"""
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "fixtures" / "faces"
STRIDES = (8, 16, 32)
A = 2


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def make_scrfd(path):
    rng = np.random.default_rng(7)
    nodes, inits, outs = [], [], {}
    score_w = {8: ((6.0, 5.0), (-2.0, -3.0)), 16: ((4.0, 6.0), (-1.0, -2.5)), 32: ((5.0, 3.0), (-3.0, -1.0))}
    for s in STRIDES:
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]))
        a, b = score_w[s]
        w = np.zeros((A, 3, 1, 1), np.float32)
        for k in range(A):
            w[k, :, 0, 0] = a[k] / 3.0 + rng.normal(0, 0.2, 3)
        inits += [init(f"ws{s}", w), init(f"bs{s}", b)]
        inits += [init(f"wb{s}", rng.normal(0, 0.3, (4 * A, 3, 1, 1))),
                  init(f"bb{s}", rng.uniform(2.0, 4.0, 4 * A))]
        inits += [init(f"wk{s}", rng.normal(0, 0.3, (10 * A, 3, 1, 1))),
                  init(f"bk{s}", rng.uniform(-1.2, 1.2, 10 * A))]
        for kind, ch, act in (("s", 1, True), ("b", 4, False), ("k", 10, False)):
            x = f"conv_{kind}{s}"
            nodes.append(helper.make_node("Conv", [f"pool{s}", f"w{kind}{s}", f"b{kind}{s}"], [x]))
            if act:
                nodes.append(helper.make_node("Sigmoid", [x], [x + "_sig"]))
                x += "_sig"
            nodes.append(helper.make_node("Transpose", [x], [x + "_t"], perm=[0, 2, 3, 1]))
            inits.append(numpy_helper.from_array(np.array([-1, ch], np.int64), f"shape_{kind}{s}"))
            name = f"{kind}{s}"
            nodes.append(helper.make_node("Reshape", [x + "_t", f"shape_{kind}{s}"], [name]))
            outs[(kind, s)] = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", ch])
    order = [outs[(k, s)] for k in ("s", "b", "k") for s in STRIDES]
    graph = helper.make_graph(nodes, "tiny_scrfd",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
                              order, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def make_image(path):
    img = np.full((480, 640, 3), 20, np.uint8)
    img[..., 2] = 35
    # Bright squares with a gradient inside, so that no two anchors tie on score (NMS order
    # would then depend on the sort algorithm).
    for (x, y, side, col) in ((40, 40, 24, (200, 190, 180)), (200, 100, 48, (190, 200, 185)),
                              (380, 220, 96, (185, 195, 200)), (100, 330, 64, (170, 185, 180))):
        yy, xx = np.mgrid[0:side, 0:side]
        ramp = (xx * 0.35 + yy * 0.6)[..., None] * (side / 96) * 0.55
        patch = np.array(col) + ramp
        assert patch.max() <= 255, "no clipping: saturated areas would tie"
        img[y:y + side, x:x + side] = patch.astype(np.uint8)
    Image.fromarray(img).save(path)
    return img


# --- insightface's SCRFD decoding (insightface/model_zoo/scrfd.py), restated ---------------

def distance2bbox(points, d):
    return np.stack([points[:, 0] - d[:, 0], points[:, 1] - d[:, 1],
                     points[:, 0] + d[:, 2], points[:, 1] + d[:, 3]], axis=-1)


def distance2kps(points, d):
    preds = []
    for i in range(0, d.shape[1], 2):
        preds.append(points[:, i % 2] + d[:, i])
        preds.append(points[:, i % 2 + 1] + d[:, i + 1])
    return np.stack(preds, axis=-1)


def nms(dets, thresh):
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def scrfd_detect(sess, img, size=(640, 640), thresh=0.5, nms_thresh=0.4):
    h, w = img.shape[:2]
    im_ratio = h / w
    model_ratio = size[1] / size[0]
    if im_ratio > model_ratio:
        nh, nw = size[1], int(size[1] / im_ratio)
    else:
        nw, nh = size[0], int(size[0] * im_ratio)
    det_scale = nh / h
    assert (nw, nh) == (w, h), "the test image is chosen so that no resampling happens"
    det_img = np.zeros((size[1], size[0], 3), np.uint8)
    det_img[:nh, :nw] = img
    blob = ((det_img.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
    net_outs = sess.run(None, {"input.1": blob})
    scores_l, boxes_l, kps_l = [], [], []
    for idx, s in enumerate(STRIDES):
        scores = net_outs[idx]
        bbox = net_outs[idx + 3] * s
        kps = net_outs[idx + 6] * s
        fh, fw = size[1] // s, size[0] // s
        centers = np.stack(np.mgrid[:fh, :fw][::-1], axis=-1).astype(np.float32)
        centers = (centers * s).reshape((-1, 2))
        centers = np.stack([centers] * A, axis=1).reshape((-1, 2))
        pos = np.where(scores >= thresh)[0]
        scores_l.append(scores[pos])
        boxes_l.append(distance2bbox(centers, bbox)[pos])
        kps_l.append(distance2kps(centers, kps).reshape((-1, 5, 2))[pos])
    scores = np.vstack(scores_l).ravel()
    # Ties would make the NMS result depend on the sort algorithm; the test image avoids them.
    assert len(np.unique(scores)) == len(scores), "tied scores among candidates"
    order = scores.argsort()[::-1]
    bboxes = np.vstack(boxes_l) / det_scale
    kpss = np.vstack(kps_l) / det_scale
    pre = np.hstack((bboxes, scores[:, None])).astype(np.float32)[order]
    keep = nms(pre, nms_thresh)
    return pre[keep], kpss[order][keep]


def make_arcface(path):
    rng = np.random.default_rng(11)
    inits = [init("cw", rng.normal(0, 0.05, (4, 3, 16, 16))), init("cb", rng.normal(0, 0.1, 4)),
             init("gw", rng.normal(0, 0.1, (196, 32))), init("gb", rng.normal(0, 0.1, 32))]
    nodes = [helper.make_node("Conv", ["data", "cw", "cb"], ["c"], strides=[16, 16], kernel_shape=[16, 16]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["fc1"])]
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    (FIX / "reference").mkdir(parents=True, exist_ok=True)
    make_scrfd(FIX / "tiny_scrfd.onnx")
    img = make_image(FIX / "scrfd_input.png")
    sess = ort.InferenceSession(str(FIX / "tiny_scrfd.onnx"))
    det, kps = scrfd_detect(sess, img)
    ref = [{"bbox": d[:4].tolist(), "score": float(d[4]), "landmarks": k.tolist()} for d, k in zip(det, kps)]
    (FIX / "reference" / "scrfd.json").write_text(json.dumps({"image": "scrfd_input.png", "detections": ref}))
    print(len(ref), "SCRFD detections")
    make_arcface(FIX / "tiny_arcface.onnx")


if __name__ == "__main__":
    main()
