"""``edgetransfer app BUNDLE --target T``: write ``BUNDLE/app/``, a small torch-free program per
runtime of the target that loads the bundle's artifact and labels, applies exactly the artifact's
preprocessing contract, classifies images, a folder or an OpenCV camera, and prints top-k with its
own timing (bytes in -> top-k out, the report's ``e2e`` figure).

Files: ``edgeapp.py`` (decode, preprocessing, softmax, top-k, timing, command line; numpy and
Pillow only), ``run_onnxruntime.py`` / ``run_litert.py`` / ``run_tensorrt.py`` (one per runtime
the target lists and the bundle has an artifact for), ``app.json`` (labels, the preprocessing
contract copied from the manifest, the artifact per runtime relative to app/, threads and ONNX
Runtime providers of the target), ``labels.txt`` and ``README.md`` for the board.
Which artifact per runtime: the INT8 one when the bundle has it (what is deployed on a CPU or NPU),
else the first in bundle order; ``--model FILE`` on the app's command line overrides.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_json, atomic_write_text
from .bundle import APP_DIR, LABELS_TXT, Bundle
from .errors import ArtifactError
from .targets import Target
from .types import Format, Precision, Runtime

APP_RUNTIMES = {Runtime.ONNXRUNTIME: (Format.ONNX, "onnxruntime numpy pillow"),
                Runtime.LITERT: (Format.TFLITE, "ai-edge-litert numpy pillow   (or tflite-runtime)"),
                Runtime.TENSORRT: (Format.ENGINE, "numpy pillow cuda-python   (TensorRT: JetPack's python3-libnvinfer)")}


def input_layout(manifest) -> str:
    """NHWC when the artifact's first input is (N, H, W, 3), else NCHW."""
    shape = (manifest.inputs or [{}])[0].get("shape") or []
    return "NHWC" if len(shape) == 4 and shape[-1] == 3 and shape[1] != 3 else "NCHW"


def pick_artifacts(bundle: Bundle, target: Target) -> dict[str, tuple[Path, Any]]:
    """{runtime: (artifact path, manifest)} for the target's runtimes that have an app."""
    arts = bundle.artifacts()
    out = {}
    for rt in target.runtimes:
        if rt not in APP_RUNTIMES:
            continue
        fmt = APP_RUNTIMES[rt][0]
        cands = [(p, m) for p, m in arts if m.format == fmt]
        if cands:
            out[str(rt)] = next(((p, m) for p, m in cands if m.precision == Precision.INT8), cands[0])
    return out


def write_app(bundle_dir: Path, target: Target) -> tuple[Path, dict[str, Any]]:
    """Write ``bundle_dir/app/`` (replaced if present); returns (its path, app.json). Raises
    :class:`ArtifactError` when the bundle has no artifact for any runtime of the target."""
    bundle = Bundle.open(bundle_dir)
    chosen = pick_artifacts(bundle, target)
    if not chosen:
        have = sorted({m.format for _, m in bundle.artifacts()})
        raise ArtifactError(f"{bundle.dir} has no artifact for an app runtime of {target.name} ({', '.join(map(str, target.runtimes))}; "
                            f"the bundle has {', '.join(have)}); build one first (edgetransfer build BUNDLE --target {target.name})")
    first = next(iter(chosen.values()))[1]
    for rt, (p, m) in chosen.items():
        if m.class_names != first.class_names or m.preprocessing != first.preprocessing:
            raise ArtifactError(f"{p.name} has other classes or preprocessing than {next(iter(chosen.values()))[0].name}: one app "
                                "serves one contract; rebuild the artifacts from one bundle")
    pre = dict(first.preprocessing)
    pre["input_layout"] = input_layout(first)
    cfg = {"labels": list(first.class_names), "preprocessing": pre, "target": target.name,
           "artifacts": {rt: f"../{p.name}" for rt, (p, _) in chosen.items()},
           "precisions": {rt: str(m.precision) for rt, (_, m) in chosen.items()},
           "threads": target.benchmark.threads or 0, "providers": list(target.execution_providers)}
    out = bundle.dir / APP_DIR
    tmp = bundle.dir / f".{APP_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    src = resources.files("edgetransfer.apptemplate")
    for name in ["edgeapp.py"] + [f"run_{rt}.py" for rt in chosen]:
        (tmp / name).write_text(src.joinpath(name).read_text())
    atomic_write_json(tmp / "app.json", cfg)
    atomic_write_text(tmp / LABELS_TXT, "\n".join(first.class_names) + "\n")
    atomic_write_text(tmp / "README.md", app_readme(cfg, chosen))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out, cfg


def app_readme(cfg: dict[str, Any], chosen: dict[str, tuple[Path, Any]]) -> str:
    p = cfg["preprocessing"]
    lines = [f"# Sample app — target `{cfg['target']}`", "",
             "Copy the whole bundle directory to the board (the app loads `../<artifact>`), then:", ""]
    for rt in chosen:
        lines += ["```bash", f"python3 -m pip install {APP_RUNTIMES[Runtime(rt)][1].split('   ')[0]}",
                  f"python3 app/run_{rt}.py photos/ --top-k 3          # a folder, files, or --camera 0 (OpenCV)",
                  "```", f"({APP_RUNTIMES[Runtime(rt)][1]}; model `{cfg['artifacts'][rt]}`, {cfg['precisions'][rt]})", ""]
    lines += ["Each line: the image's top-k and the time from its bytes to top-k (decode, preprocessing, inference, softmax) —",
              "the report's `e2e` figure, measured the same way. The last line is the median over the images.", "",
              f"Preprocessing (app.json, the manifest's contract): shorter side to {p['resize_size']} px ({p['interpolation']}), "
              f"centre crop {p['input_size']}, /255, mean {p['mean']}, std {p['std']}, {p.get('channel_order', 'RGB')}, "
              f"{p['input_layout']} float32; EXIF orientation applied, alpha over {p.get('image', {}).get('background', [255, 255, 255])}.",
              f"Labels: `{LABELS_TXT}` ({len(cfg['labels'])} classes, the model's output order).", ""]
    return "\n".join(lines)
