"""The command line under mistakes: --version, did-you-mean, usage errors as one line naming the
option with exit 2, Ctrl-C during training = exit 130 with the best model so far kept."""

from __future__ import annotations

import pytest

from ..fixtures.cli import cli, run_cli
from edgetransfer import __version__


def test_version():
    r = run_cli(["--version"])
    assert r.returncode == 0 and r.stdout.strip() == f"edgetransfer {__version__}"


@pytest.mark.parametrize("args, words", [
    (["trian"], "Did you mean 'train'?"),
    (["targets", "show", "x86-cpuu"], "did you mean 'x86-cpu'?"),
    (["targets", "show", "jetson-orin"], "did you mean 'jetson-agx-orin' or 'jetson-orin-nano'?"),
    (["train", "DATA", "--out", "o", "--epochs", "abc"], "'--epochs'"),
    (["train", "DATA", "--out", "o", "--epochs", "0"], "--epochs must be >= 1"),
    (["train"], "Missing argument"),
])
def test_usage_errors_exit_2_naming_the_mistake(args, words):
    r = run_cli(args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_during_training_exits_130_keeping_the_best_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from ..fixtures.images import make_image_folder
    from edgetransfer.train import fit as F

    data = make_image_folder(tmp_path / "data", per_class=5, size=40)
    original = F.save_last

    def interrupt(run, p, opt, sched):
        original(run, p, opt, sched)
        if run.state.epoch == 2:
            raise KeyboardInterrupt  # what SIGINT raises in the main thread

    monkeypatch.setattr(F, "save_last", interrupt)
    out = tmp_path / "b"
    args = ["train", str(data), "--out", str(out), "--model", "timm:resnet10t", "--no-pretrained", "--input-size", "32",
            "--epochs", "4", "--batch-size", "4"]
    assert cli(args) == 130
    err = capsys.readouterr().err
    assert "interrupted in phase head after epoch 2" in " ".join(err.split()) and "continue with --resume" in err
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    monkeypatch.setattr(F, "save_last", original)
    assert cli(args) == 0  # without --resume: starts over, and says so
    assert "pass --resume to continue" in " ".join(capsys.readouterr().err.split())
