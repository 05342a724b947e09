"""Export time of a Hugging Face classifier with both exporters, same model, all gates (issue 15).

    python benchmarks/hf_export_time.py [--family resnet|vit|convnext|mobilevit] [--size full|tiny] [--data DIR]

A randomly initialised model is built from its transformers config (``full``: the config class's
defaults, ResNet-50 / ViT-B/16 / ConvNeXt-T / MobileViT-S; ``tiny``: the test fixtures'), saved
with ``save_pretrained`` (no download), given a head for ``--data``'s classes by a one-epoch
head-only training on cached features, then exported twice from the same checkpoint into two
copies of the bundle: ``--exporter torch`` (TorchScript) and ``--exporter optimum``. Each export
is the whole export stage: writing ``hf/`` with its from_pretrained check, the export, strict
shape inference, full checker, dynamic batch 1/3/8 and parity vs PyTorch on the validation
photos, golden set. Prints one JSON line: seconds of each, parity max |diff| of each, and the
ratio torch / optimum. Run with ``nice`` on a shared host; seconds depend on the host's load,
the ratio less so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def full_config(family: str):
    import transformers as tr

    return {"resnet": tr.ResNetConfig, "vit": tr.ViTConfig, "convnext": tr.ConvNextConfig, "mobilevit": tr.MobileViTConfig}[family]()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="resnet", choices=["resnet", "vit", "convnext", "mobilevit"])
    ap.add_argument("--size", default="full", choices=["full", "tiny"])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hymenoptera")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"--data {args.data} is not a directory", file=sys.stderr)
        return 2
    import transformers as tr

    from edgetransfer.export.onnx import ExportConfig
    from edgetransfer.pipeline import stage_export, stage_train
    from edgetransfer.targets import load_target
    from edgetransfer.train import TrainConfig
    from tests.fixtures.hf_models import make

    target = load_target("x86-cpu")
    with tempfile.TemporaryDirectory(prefix="hf-export-") as work:
        work = Path(work)
        src = work / "src"
        if args.size == "tiny":
            make(args.family, src)
        else:
            tr.AutoModelForImageClassification.from_config(full_config(args.family)).save_pretrained(str(src))
            proc = {"vit": tr.ViTImageProcessor(), "mobilevit": tr.MobileViTImageProcessor(size={"shortest_edge": 288})}.get(
                args.family, tr.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875))
            proc.save_pretrained(str(src))
        b = work / "b"
        stage_train(args.data, b, TrainConfig(model=f"hf:{src}", epochs=1, batch_size=16), target=target)
        shutil.copytree(b, work / "t")
        out = {"family": args.family, "size": args.size}
        for name, bundle, cfg in (("torch", work / "t", ExportConfig(exporter="torch", dynamo=False)),
                                  ("optimum", b, ExportConfig(exporter="optimum"))):
            t = time.perf_counter()
            m = stage_export(bundle, target, cfg)
            out[f"{name}_s"] = round(time.perf_counter() - t, 1)
            out[f"{name}_parity_max_abs"] = m.details["parity"]["max_abs"]
        out["torch_over_optimum"] = round(out["torch_s"] / out["optimum_s"], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
