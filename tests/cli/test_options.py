"""The command line's options come from the config dataclasses: every field reachable, one help
text per setting, --config FILE.yaml with command-line overrides, the resolved config saved in the
bundle; listings on stdout. No training here: the stage functions are replaced by recorders."""

from __future__ import annotations

import dataclasses

import pytest
import typer
import yaml
from typer.testing import CliRunner

from edgetransfer.bench.benchmark import BenchSettings
from edgetransfer.cli import app
from edgetransfer.errors import ConfigError
from edgetransfer.export.onnx import ExportConfig
from edgetransfer.train import TrainConfig

COMMAND = typer.main.get_command(app)


def _options(name: str) -> dict:
    cmd = COMMAND.commands[name]
    return {p.name: p for p in cmd.params if p.param_type_name == "option"}


def test_every_config_field_is_an_option():
    run, train = _options("run"), _options("train")
    for f in dataclasses.fields(TrainConfig):
        assert f.name in run and f.name in train, f.name
    renamed = {"batch_sizes": "bench_batch", "min_iterations": "iterations"}
    for f in dataclasses.fields(BenchSettings):
        assert renamed.get(f.name, f.name) in run and renamed.get(f.name, f.name) in _options("benchmark"), f.name
    renamed = {"max_abs": "parity_max_abs", "mean_abs": "parity_mean_abs", "min_agreement": "parity_min_agreement"}
    for f in dataclasses.fields(ExportConfig):
        assert renamed.get(f.name, f.name) in run and renamed.get(f.name, f.name) in _options("export"), f.name
    assert "--clip-grad-norm" in run["clip_grad_norm"].opts  # the option the NaN-loss message tells users to pass
    assert run["feature_cache"].secondary_opts == ["--no-feature-cache"]


def test_train_and_run_describe_shared_options_the_same_way():
    run, train = _options("run"), _options("train")
    shared = set(run) & set(train)
    assert len(shared) >= len(dataclasses.fields(TrainConfig)) + 5  # + out, target, val, val_fraction, quiet, config
    for name in shared:
        assert run[name].help and run[name].help == train[name].help, name
        assert run[name].opts == train[name].opts and run[name].default == train[name].default, name
    assert train["clip_grad_norm"].help == TrainConfig.__dataclass_fields__["clip_grad_norm"].metadata["help"]


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Replace stage_train by a recorder: (calls list, data dir)."""
    import edgetransfer.pipeline as pipeline

    calls = []
    def stage_train(data, out, cfg, **kw):
        out.mkdir(parents=True, exist_ok=True)  # as the real stage does once the input is checked
        calls.append((cfg, kw))
        return _Res()

    monkeypatch.setattr(pipeline, "stage_train", stage_train)
    data = tmp_path / "data"
    data.mkdir()
    return calls, data


class _Res:
    checkpoint, best_val_top1, best_phase, best_epoch = "model.pt", 1.0, "head", 1


def test_cli_values_reach_the_config(recorded, tmp_path):
    calls, data = recorded
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "o"), "--clip-grad-norm", "2.5", "--no-feature-cache",
                                 "--no-pretrained", "--val-fraction", "0.3", "-q"])
    assert r.exit_code == 0, r.output
    cfg, kw = calls[-1]
    assert (cfg.clip_grad_norm, cfg.feature_cache, cfg.pretrained, cfg.epochs) == (2.5, False, False, 10)
    assert kw["val_fraction"] == 0.3


def test_config_file_with_command_line_overrides_and_the_resolved_copy(recorded, tmp_path):
    calls, data = recorded
    f = tmp_path / "recipe.yaml"
    f.write_text("epochs: 4\nbatch-size: 8\nlr: 0.01\nclass_weights: true\nval_fraction: 0.25\nunfreeze: all\nfinetune_epochs: 2\n")
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(out), "--config", str(f), "--lr", "0.002", "--no-class-weights", "-q"])
    assert r.exit_code == 0, r.output
    cfg, kw = calls[-1]
    # the file sets what the command line does not; the command line wins where both do
    assert (cfg.epochs, cfg.batch_size, cfg.finetune_epochs, cfg.unfreeze) == (4, 8, 2, "all")
    assert (cfg.lr, cfg.class_weights, kw["val_fraction"]) == (0.002, False, 0.25)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.002 and saved["epochs"] == 4 and saved["data"] == str(data) and "quiet" not in saved
    assert set(saved) >= {f.name for f in dataclasses.fields(TrainConfig)}
    # the saved file reproduces the run
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "o2"), "--config", str(out / "config.yaml"), "-q"])
    assert r.exit_code == 0, r.output
    assert calls[-1][0] == cfg


def test_config_file_errors_name_what_to_fix(recorded, tmp_path):
    _, data = recorded
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: 4\nwarmup_epoch: 1\n")
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "o"), "--config", str(f)])
    assert isinstance(r.exception, ConfigError) and "warmup_epoch is no option of 'train'" in str(r.exception)
    assert "warmup_epochs" in str(r.exception)
    f.write_text("epochs: many\n")  # checked by the option's own type, like a command-line value
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "o"), "--config", str(f)], terminal_width=300)
    assert r.exit_code == 2 and "Invalid value for '--epochs'" in r.output
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "none.yaml")])
    assert isinstance(r.exception, ConfigError) and "no such file" in str(r.exception)
    assert not (tmp_path / "o").exists()  # rejected input leaves nothing behind


def test_listings_go_to_stdout_and_help_keeps_brackets():
    r = CliRunner().invoke(app, ["targets", "list"], terminal_width=250)
    assert r.exit_code == 0 and "jetson-orin-nano" in r.stdout and "x86-cpu" in r.stdout
    assert "jetson" not in r.stderr
    r = CliRunner().invoke(app, ["benchmark", "--help"])
    assert "pip install 'edgetransfer[device]'" in flat(r.stdout)  # Rich markup would eat '[device]'


def flat(text: str) -> str:
    """Help text without the box drawing and line wrapping."""
    import re

    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_usage_error_is_a_message_with_exit_2(tmp_path):
    from ..fixtures.cli import run_cli
    res = run_cli(["train", "--out", str(tmp_path)])
    assert res.returncode == 2 and "Traceback" not in res.stderr and "Missing" in res.stderr, res.stderr[-2000:]


def test_commands_are_grouped_in_help():
    r = CliRunner().invoke(app, ["--help"], terminal_width=200)
    text = r.stdout
    for panel in ("Stages", "Checks", "Targets", "Devices"):
        assert f"─ {panel} " in text, panel
    assert text.index("─ Stages ") < text.index(" run ") < text.index("─ Checks ") < text.index(" selftest ")


def test_a_train_config_runs_the_whole_job(recorded, tmp_path, monkeypatch):
    """README: `edgetransfer run --config runs/x/config.yaml --out runs/y` repeats a train recipe."""
    import edgetransfer.pipeline as pipeline

    calls, data = recorded
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "x"), "--epochs", "3", "--clip-grad-norm", "1", "-q"])
    assert r.exit_code == 0, r.output
    runs = []
    monkeypatch.setattr(pipeline, "run", lambda data, out, cfg, **kw: out.mkdir() or runs.append((data, out, cfg, kw)) or {})
    r = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "x" / "config.yaml"), "--out", str(tmp_path / "y"), "--iterations", "7"])
    assert r.exit_code == 0, r.output
    d, out, cfg, kw = runs[-1]
    assert (str(d), out, cfg) == (str(data), tmp_path / "y", calls[-1][0]) and cfg.clip_grad_norm == 1.0
    assert kw["settings"].min_iterations == 7 and kw["export_cfg"].dynamo is True
    assert yaml.safe_load((tmp_path / "y" / "config.yaml").read_text())["iterations"] == 7


def test_json_output_is_only_the_document(recorded, tmp_path, monkeypatch):
    import json

    import edgetransfer.pipeline as pipeline

    _, data = recorded
    report = {"schema_version": 1, "results": [{"status": "failed", "error": "x"}]}
    monkeypatch.setattr(pipeline, "run", lambda data, out, cfg, **kw: out.mkdir() or report)
    r = CliRunner().invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == report  # nothing else on stdout ...
    assert "1 artifact(s) failed" in r.stderr  # ... notes go to stderr


def test_run_takes_data_as_argument_or_option(recorded, tmp_path, monkeypatch):
    import edgetransfer.pipeline as pipeline

    _, data = recorded
    runs = []
    monkeypatch.setattr(pipeline, "run", lambda data, out, cfg, **kw: out.mkdir() or runs.append(data) or {})
    for i, argv in enumerate((["run", str(data)], ["run", "--data", str(data)], ["run", str(data), "--data", str(data)])):
        r = CliRunner().invoke(app, argv + ["--out", str(tmp_path / f"o{i}"), "-q"])
        assert r.exit_code == 0, r.output
        assert str(runs[-1]) == str(data)
        saved = yaml.safe_load((tmp_path / f"o{i}" / "config.yaml").read_text())
        assert saved["data"] == str(data) and "data_option" not in saved  # one key, reusable with --config
    r = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "o1" / "config.yaml"), "--out", str(tmp_path / "o3"), "-q"])
    assert r.exit_code == 0 and str(runs[-1]) == str(data), r.output
    from edgetransfer.errors import ConfigError  # edgetransfer's main() prints it and exits 2

    r = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "o4")])
    assert isinstance(r.exception, ConfigError) and "edgetransfer run DATA" in str(r.exception), r.output
    r = CliRunner().invoke(app, ["run", str(data), "--data", str(tmp_path), "--out", str(tmp_path / "o5")])
    assert isinstance(r.exception, ConfigError) and "two datasets" in str(r.exception), r.output
    assert not (tmp_path / "o4").exists() and not (tmp_path / "o5").exists()
