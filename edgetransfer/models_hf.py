"""Hugging Face ``transformers`` image classifiers as a model source (``--model hf:ID_OR_DIR``).

``AutoModelForImageClassification`` is loaded from a Hub id or a local ``save_pretrained``
folder with the classifier rebuilt for the user's classes (``num_labels``, ``id2label`` /
``label2id`` from the ImageFolder's class names, ``ignore_mismatched_sizes=True``, the new
head always re-initialised, even when the class count happens to equal the checkpoint's), and
wrapped in :class:`HFClassifier` so it takes float32 (B, 3, S, S) and returns float32 logits
(B, num_classes) like every other source. The preprocessing comes from the model's own image
processor (:func:`edgetransfer.preprocess.from_hf_processor`). Stages for freezing / stage-wise
unfreezing / layer-wise learning rates are the entries of the base model's outermost
``nn.ModuleList`` (ViT ``encoder.layer``, ConvNeXt / ResNet ``encoder.stages``, Swin
``encoder.layers``, MobileViT ``encoder.layer``), checked against the config's
``num_hidden_layers`` / ``len(depths)`` where it has them.

Offline: ``HF_HUB_OFFLINE=1`` is read at call time (``local_files_only``); when neither the Hub
nor a local folder works, :class:`~edgetransfer.errors.ModelSourceError` names both ways out.
Needs the ``hf`` extra (pins and why: pyproject.toml, README "Hugging Face models").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .data import PreprocessSpec
from .errors import ModelSourceError, require
from .preprocess import from_hf_processor

HEAD = "hf.classifier"  # dotted path of the head inside HFClassifier (every *ForImageClassification names it classifier)
_CLASS = None


def _transformers():
    return require("transformers", "hf", "Hugging Face models (--model hf:ID_OR_DIR)")


def wrapper_class():
    """``HFClassifier(nn.Module)``: ``forward(x) = hf(pixel_values=x).logits``; ``group_matcher``
    gives timm's stage grouping (see :func:`stage_groups`). Built once, lazily (torch is optional)."""
    global _CLASS
    if _CLASS is None:
        torch = require("torch", "train")

        class HFClassifier(torch.nn.Module):
            def __init__(self, hf):
                super().__init__()
                self.hf = hf

            def forward(self, x):
                return self.hf(pixel_values=x).logits

            def group_matcher(self, coarse: bool = True):
                prefix, n = stage_list(self.hf)
                groups = stage_groups([k for k, _ in self.named_parameters()], "hf." + prefix, n)
                return lambda name: groups[name]

        _CLASS = HFClassifier
    return _CLASS


def stage_list(hf) -> tuple[str, int]:
    """The dotted path and length of the base model's outermost ``nn.ModuleList`` (the stages),
    preferring one whose length the config states (``num_hidden_layers``, ``len(depths)``,
    ``num_stages``). Raises :class:`ModelSourceError` when the model has no ModuleList."""
    torch = require("torch", "train")
    cfg = hf.config
    expect = {v for v in (getattr(cfg, "num_hidden_layers", None), len(getattr(cfg, "depths", None) or []) or None,
                          getattr(cfg, "num_stages", None)) if isinstance(v, int) and v > 0}
    lists = [(n, m) for n, m in hf.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) and not n.startswith("classifier")]
    if not lists:
        raise ModelSourceError(f"{type(hf).__name__} has no nn.ModuleList of stages; train it with --trainable-blocks 0")
    lists.sort(key=lambda nm: nm[0].count("."))
    for n, m in lists:
        if len(m) in expect:
            return n, len(m)
    return lists[0][0], len(lists[0][1])


def stage_groups(named: list[str], prefix: str, n: int) -> dict[str, int]:
    """Group of each parameter name (in registration order): 0 before the stages (embeddings,
    stem), ``i + 1`` in stage ``i`` (under ``prefix.i.``), ``n`` after them (the final norm joins
    the last stage)."""
    out, seen = {}, False
    for name in named:
        if name.startswith(prefix + "."):
            out[name], seen = int(name[len(prefix) + 1:].split(".")[0]) + 1, True
        else:
            out[name] = n if seen else 0
    return out


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_error(src: str, exc: Exception) -> ModelSourceError:
    where = "HF_HUB_OFFLINE is set, so the Hub was not asked" if _offline() else "the Hub could not be reached or has no such model"
    return ModelSourceError(
        f"could not load the Hugging Face model {src!r} ({where}; {type(exc).__name__}: {str(exc)[:300]}). Either "
        f"(1) where there is network access, save it to a folder: AutoModelForImageClassification.from_pretrained(ID)"
        f".save_pretrained(DIR) and AutoImageProcessor.from_pretrained(ID).save_pretrained(DIR) (or `hf download ID "
        f"--local-dir DIR`), copy DIR here and pass --model hf:DIR; or (2) connect to the Hub (unset HF_HUB_OFFLINE) "
        f"and pass --model hf:ID")


def _processor(src: str) -> tuple[PreprocessSpec, dict[str, Any] | None]:
    tr = _transformers()
    try:
        d = tr.AutoImageProcessor.from_pretrained(src, local_files_only=_offline() or Path(src).is_dir(), use_fast=False).to_dict()
    except Exception:  # no preprocessor config: ImageNet defaults, said in the log
        from .progress import log

        log(f"[yellow]{src} has no image processor config; using the ImageNet default preprocessing (224/256 bicubic)")
        return PreprocessSpec(), None
    return from_hf_processor(d), d


def _reinit_head(hf) -> None:
    for m in hf.classifier.modules():
        if hasattr(m, "reset_parameters"):
            try:
                hf._init_weights(m)
            except Exception:
                m.reset_parameters()


def build(src: str, class_names: list[str], *, pretrained: bool = True, state_dict: dict | None = None):
    """``(HFClassifier, PreprocessSpec, arch dict, description)`` for ``hf:src``.

    ``pretrained``: the weights of ``src``; else (or with ``state_dict``, a plain state dict of the
    same architecture, e.g. ``file:PATH --arch hf:src``) only its config. ``class_names``: the
    ImageFolder's classes, in label order (the new head's id2label). Raises
    :class:`ModelSourceError` when ``src`` cannot be loaded (naming the offline way and the Hub
    way), the state dict does not fit, or the model does not take its processor's input size.
    """
    tr = _transformers()
    torch = require("torch", "train")
    if len(class_names) < 2:
        raise ModelSourceError(f"a classifier needs at least 2 classes (got {len(class_names)})")
    labels = dict(num_labels=len(class_names), id2label={i: n for i, n in enumerate(class_names)},
                  label2id={n: i for i, n in enumerate(class_names)})
    local = Path(src).is_dir()
    verbosity = tr.logging.get_verbosity()
    tr.logging.set_verbosity_error()  # "Some weights ... newly initialized": the head, on purpose
    try:
        if pretrained and state_dict is None:
            hf = tr.AutoModelForImageClassification.from_pretrained(src, ignore_mismatched_sizes=True, local_files_only=_offline() or local, **labels)
        else:
            cfg = tr.AutoConfig.from_pretrained(src, local_files_only=_offline() or local, **labels)
            hf = tr.AutoModelForImageClassification.from_config(cfg)
    except (OSError, ValueError) as exc:
        raise _load_error(src, exc) from exc
    finally:
        tr.logging.set_verbosity(verbosity)
    _reinit_head(hf)
    if state_dict is not None:
        sd = {k.removeprefix("module.").removeprefix("hf."): v for k, v in state_dict.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        try:
            missing, _ = hf.load_state_dict(sd, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ModelSourceError(f"the state dict does not fit hf:{src}: {str(exc)[:400]}") from exc
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing:
            raise ModelSourceError(f"the state dict does not fit hf:{src}: {len(missing)} backbone tensors missing (e.g. {missing[:3]})")
    spec, proc = _processor(src)
    model = wrapper_class()(hf).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, spec.input_size, spec.input_size))
    except Exception as exc:
        raise ModelSourceError(f"hf:{src} does not take {spec.input_size}x{spec.input_size} inputs (its image processor's size): "
                               f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    arch = {"source": "hf", "name": src, "config": hf.config.to_json_string(use_diff=False)}
    if proc is not None:
        arch["processor"] = json.dumps(proc)
    desc = f"hf:{src} ({type(hf).__name__}{', pretrained' if pretrained and state_dict is None else ''})"
    return model, spec, arch, desc


def from_arch(arch: dict[str, str]):
    """Rebuild the (untrained) ``HFClassifier`` an arch dict of :func:`build` describes, offline."""
    tr = _transformers()
    d = json.loads(arch["config"])
    cfg = tr.AutoConfig.for_model(d.pop("model_type"), **d)
    return wrapper_class()(tr.AutoModelForImageClassification.from_config(cfg)).eval()


def save_folder(model, arch: dict[str, str], directory: Path) -> None:
    """Write ``model`` (an HFClassifier) as a Hugging Face folder: config.json (with the user's
    id2label / label2id), the weights as safetensors, and the image processor's config, so that
    ``AutoModelForImageClassification.from_pretrained(directory)`` gives the same logits."""
    tr = _transformers()
    directory.mkdir(parents=True, exist_ok=True)
    model.hf.save_pretrained(str(directory), safe_serialization=True)
    if arch.get("processor"):
        d = json.loads(arch["processor"])
        cls = getattr(tr, d.get("image_processor_type", "").removesuffix("Fast"), None) or tr.ViTImageProcessor
        cls.from_dict(d).save_pretrained(str(directory))
