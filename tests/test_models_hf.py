"""``--model hf:DIR`` / ``file: --arch hf:DIR``: tiny random transformers classifiers saved locally
(:mod:`tests.fixtures.hf_models`, no downloads)."""

from __future__ import annotations

import pytest

_tr = pytest.importorskip("transformers")
if int(_tr.__version__.split(".")[0]) >= 5:
    pytest.skip("transformers " + _tr.__version__ + " is not the hf extra's 4.57.6 (the mobile extras bring transformers 5 for litert-torch); the hf tests run in make test's venv: pip install 'edgetransfer[hf]'", allow_module_level=True)
torch = pytest.importorskip("torch")

from edgetransfer.errors import ModelSourceError  # noqa: E402
from edgetransfer.models import backbone_blocks, build_model, load_checkpoint_model  # noqa: E402

from .fixtures.hf_models import FAMILIES, make  # noqa: E402

NAMES = ["ants", "bees", "wasps"]
# stages the config states: ViT num_hidden_layers, ConvNeXt / ResNet len(depths); MobileViT: the 5 encoder layers
STAGES = {"vit": 2, "convnext": 4, "mobilevit": 5, "resnet": 4}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {f: make(f, root / f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_model_head_labels_stages(hf_dirs, family):
    model, info = build_model(f"hf:{hf_dirs[family]}", 3, class_names=NAMES)
    cfg = model.hf.config
    assert cfg.num_labels == 3 and cfg.id2label == {0: "ants", 1: "bees", 2: "wasps"} and cfg.label2id["wasps"] == 2
    assert info.head_path == "hf.classifier" and info.arch["source"] == "hf"
    s = info.preprocessing.input_size
    out = model(torch.randn(2, 3, s, s))
    assert out.shape == (2, 3) and out.dtype == torch.float32
    blocks = backbone_blocks(model, info.head_path)
    assert len(blocks) == STAGES[family] + 1  # stem + one per stage; the final norm joins the last stage
    assert not any(n.startswith("hf.classifier") for b in blocks for n in b)
    assert sum(len(b) for b in blocks) + len(list(model.get_submodule("hf.classifier").parameters())) == len(list(model.parameters()))
    # the rebuilt model of a checkpoint gives the same logits
    ck = {"model": info.to_dict(), "state_dict": model.state_dict()}
    again = load_checkpoint_model(ck)
    x = torch.randn(2, 3, s, s)
    assert torch.equal(model(x), again(x))
    if family == "mobilevit":
        assert info.preprocessing.channel_order == "BGR"


def test_hf_head_reinitialised_when_class_count_matches(hf_dirs, tmp_path):
    """5 classes on a 5-label checkpoint: the sizes match, the head must still be new."""
    import transformers as tr

    orig = tr.AutoModelForImageClassification.from_pretrained(str(hf_dirs["convnext"]))
    model, _ = build_model(f"hf:{hf_dirs['convnext']}", 5, class_names=list("abcde"))
    assert not torch.equal(model.hf.classifier.weight, orig.classifier.weight)
    assert torch.equal(model.hf.convnext.embeddings.patch_embeddings.weight, orig.convnext.embeddings.patch_embeddings.weight)
    assert model.hf.config.id2label[4] == "e"


def test_hf_plain_state_dict_with_arch(hf_dirs, tmp_path):
    import transformers as tr

    orig = tr.AutoModelForImageClassification.from_pretrained(str(hf_dirs["resnet"]))
    path = tmp_path / "resnet_sd.pt"
    torch.save(orig.state_dict(), path)
    model, info = build_model(f"file:{path}", 2, arch=f"hf:{hf_dirs['resnet']}", class_names=["x", "y"])
    assert torch.equal(model.hf.resnet.embedder.embedder.convolution.weight, orig.resnet.embedder.embedder.convolution.weight)
    assert model.hf.config.id2label == {0: "x", 1: "y"}
    bad = tmp_path / "bad.pt"
    torch.save({"resnet.embedder.embedder.convolution.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelSourceError, match="does not fit"):
        build_model(f"file:{bad}", 2, arch=f"hf:{hf_dirs['resnet']}")


def test_hf_offline_error_names_both_ways(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as e:
        build_model("hf:no-such-org/no-such-model", 2)
    msg = str(e.value)
    assert "HF_HUB_OFFLINE is set" in msg and "--model hf:DIR" in msg and "--model hf:ID" in msg and "save_pretrained" in msg


def test_hf_mlp_head_refused(hf_dirs):
    with pytest.raises(ModelSourceError, match="--head mlp"):
        build_model(f"hf:{hf_dirs['vit']}", 2, head="mlp")
