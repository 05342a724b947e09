"""Classify images with a model of an edgetransfer bundle: decode, the bundle's preprocessing,
the runtime, softmax, top-k; prints each image's top-k and its own timing.

Written by ``edgetransfer app``; needs numpy, Pillow and the runtime of the run_*.py you start
(OpenCV only for --camera). The preprocessing contract (app.json, copied from the artifact's
manifest) is applied exactly as edgetransfer applies it: EXIF orientation, 16-bit scaled
v * 255 / 65535, alpha over the background colour; shorter side resized to resize_size (rounding
as stated), centre crop input_size, / 255, (x - mean) / std, RGB or BGR, NCHW float32.

Usage: python run_onnxruntime.py IMAGE_OR_DIR [...] [--top-k 3] [--json] [--model FILE] [--camera N]
"""

import argparse
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
INTERP = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
          "box": Image.BOX, "hamming": Image.HAMMING}


def load_config(path=None):
    with open(path or os.path.join(HERE, "app.json")) as fh:
        return json.load(fh)


def to_rgb(im, background):
    """A decoded PIL image in any mode -> 8-bit RGB (the bundle's image policy)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im if mode == "I" else im.convert("I"), dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, tuple(background) + (255,)), rgba).convert("RGB")
    return im.convert("RGB")


def decode(data, policy):
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if policy.get("exif_orientation", True) and im.getexif().get(0x0112, 1) not in (None, 1):
            im = ImageOps.exif_transpose(im)
        return to_rgb(im, policy.get("background", (255, 255, 255)))


def preprocess(image, p):
    """RGB PIL image -> float32 (1, 3, S, S) (or (1, S, S, 3) when layout is NHWC)."""
    w, h = image.size
    r = p["resize_size"]
    if p.get("resize_mode", "shorter") == "squash":
        nw, nh = r, r
    elif p.get("resize_rounding", "round") == "floor":
        nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    else:
        s = r / min(w, h)
        nw, nh = max(r, round(w * s)), max(r, round(h * s))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), INTERP[p["interpolation"]])
    c = p["input_size"]
    if p.get("crop_rounding", "round") == "floor":
        left, top = (nw - c) // 2, (nh - c) // 2
    else:
        left, top = int(round((nw - c) / 2.0)), int(round((nh - c) / 2.0))
    a = np.asarray(image.crop((left, top, left + c, top + c)), dtype=np.float32) * np.float32(1.0 / 255.0)
    a = (a - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    if p.get("channel_order", "RGB") == "BGR":
        a = a[..., ::-1]
    if p.get("input_layout", "NCHW") == "NHWC":
        return np.ascontiguousarray(a[None])
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None])


def softmax(z):
    z = np.asarray(z, dtype=np.float32).reshape(1, -1)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True))[0]


def images(paths):
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in sorted(os.walk(p)):
                for f in sorted(files):
                    if f.lower().endswith(EXTS):
                        yield os.path.join(root, f)
        else:
            yield p


class Classifier:
    """bytes -> (top-k [(label, p)], ms). ``infer``: float32 input -> logits (the runtime)."""

    def __init__(self, infer, cfg, k=3):
        self.infer, self.cfg, self.k = infer, cfg, k
        self.labels = cfg["labels"]

    def __call__(self, data):
        t0 = time.perf_counter()
        x = preprocess(decode(data, self.cfg["preprocessing"].get("image", {})), self.cfg["preprocessing"])
        probs = softmax(self.infer(x))
        top = np.argsort(-probs, kind="stable")[: self.k]
        out = [(self.labels[i], float(probs[i])) for i in top]
        return out, (time.perf_counter() - t0) * 1e3


def camera(clf, index, frames):
    import cv2  # optional: pip install opencv-python-headless

    cap = cv2.VideoCapture(index)
    try:
        for _ in range(frames):
            ok, frame = cap.read()
            if not ok:
                sys.exit(f"camera {index}: no frame")
            ok, jpg = cv2.imencode(".jpg", frame)
            top, ms = clf(jpg.tobytes())
            print(f"{ms:7.2f} ms  " + ", ".join(f"{n} {p:.3f}" for n, p in top), flush=True)
    finally:
        cap.release()


def main(make_infer, runtime, argv=None):
    ap = argparse.ArgumentParser(description=f"classify images with the bundle's {runtime} model")
    ap.add_argument("inputs", nargs="*", help="image files or folders")
    ap.add_argument("--model", help=f"model file (default: app.json's {runtime} artifact)")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON object per image, then a summary object")
    ap.add_argument("--camera", type=int, help="classify frames of this OpenCV camera index instead")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3, help="untimed first calls")
    a = ap.parse_args(argv)
    cfg = load_config()
    model = a.model or os.path.join(HERE, cfg["artifacts"][runtime])
    clf = Classifier(make_infer(model, cfg), cfg, a.top_k)
    if a.camera is not None:
        return camera(clf, a.camera, a.frames)
    files = list(images(a.inputs))
    if not files:
        sys.exit("give image files or folders (or --camera N)")
    blobs = [(f, open(f, "rb").read()) for f in files]
    for _, data in blobs[: a.warmup]:
        clf(data)
    times = []
    for f, data in blobs:
        top, ms = clf(data)
        times.append(ms)
        if a.json:
            print(json.dumps({"file": f, "top": top, "ms": ms}))
        else:
            print(f"{f}: " + ", ".join(f"{n} {p:.3f}" for n, p in top) + f"  ({ms:.2f} ms)")
    summary = {"images": len(times), "median_ms": float(np.median(times)), "runtime": runtime, "model": model}
    print(json.dumps(summary) if a.json else f"{len(times)} images, median {summary['median_ms']:.2f} ms per image (bytes -> top-k)")
    return summary
