"""No path that reads a model file runs code from it (issue 11, "Security").

A crafted pickle whose unpickling would create a file is given to ``compress`` and, as a run's
``best/model.pt``, to ``export``: both refuse it with one line (exit 2) and the file never
appears. Models travel as a state dict plus ``arch.json``, or a state dict plus a
``--model-factory`` the user controls.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.compression.cli import load_model
from nasforge.errors import NasforgeError
from nasforge.modelfile import UnsafeModelFile, load_state_dict

runner = CliRunner()


class _CreatesAFile:
    """Unpickling this calls ``open(marker, "w")``: the file appears if code runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def crafted_pickle(path: Path, marker: Path) -> Path:
    torch.save({"model": _CreatesAFile(marker)}, path)
    return path


def test_the_crafted_pickle_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    """The control: the payload is live (so the refusals below are meaningful)."""
    marker = tmp_path / "control"
    obj = torch.load(crafted_pickle(tmp_path / "x.pt", marker), weights_only=False)
    obj["model"].close()
    assert marker.exists()


def test_load_state_dict_refuses_a_pickle_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeModelFile, match="state_dict"):
        load_state_dict(crafted_pickle(tmp_path / "evil.pt", marker))
    assert not marker.exists()


def test_compress_refuses_a_crafted_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = crafted_pickle(tmp_path / "evil.pt", marker)
    res = runner.invoke(app, ["compress", str(evil), "--data", "digits", "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert not marker.exists()
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--model-factory" in res.output and "Traceback" not in res.output


def test_compress_refuses_a_pickled_whole_module(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), path)
    res = runner.invoke(app, ["compress", str(path), "--data", "digits"])
    assert res.exit_code == 2 and "does not unpickle" in res.output


def test_a_state_dict_needs_its_architecture(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    res = runner.invoke(app, ["compress", str(path), "--data", "digits"])
    assert res.exit_code == 2 and "--model-factory" in res.output


FACTORY = """
from torch import nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
"""


def test_model_factory_rebuilds_a_users_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_models_for_test.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models_for_test", raising=False)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    got = load_model(tmp_path / "w.pt", "my_models_for_test:make")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(got(x), ref.eval()(x))
    with pytest.raises(NasforgeError, match="--model-factory"):
        load_model(tmp_path / "w.pt", "my_models_for_test:nope")
    with pytest.raises(NasforgeError, match="--model-factory"):
        load_model(tmp_path / "w.pt", "no_colon_here")


def test_compress_config_model_factory_and_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("compress:\n  prune: {method: channel\n")
    res = runner.invoke(app, ["compress", "x.pt", "--config", str(bad)])
    assert res.exit_code == 2 and f"{bad}: line" in res.output and "Traceback" not in res.output
    tagged = tmp_path / "tag.yaml"
    tagged.write_text("compress: !!python/object/apply:os.system ['echo hi']\n")
    res = runner.invoke(app, ["compress", "x.pt", "--config", str(tagged)])
    assert res.exit_code == 2 and f"{tagged}: line 1" in res.output
    assert "ConstructorError" not in res.output


def _search(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: sec\nruns_dir: {tmp_path / 'runs'}\ndata: {{name: digits}}\n"
        "search: {trials: 1, executor: inline}\ntrain: {epochs: 1}\n"
        "latency: {repeats: 3, warmup: 0}\nfinal: {epochs: 1, export_onnx: false}\n"
    )
    res = runner.invoke(app, ["search", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    return tmp_path / "runs" / "sec"


def test_best_holds_a_state_dict_and_its_arch_and_export_refuses_a_crafted_one(
    tmp_path: Path,
) -> None:
    run = _search(tmp_path)
    best = run / "best"
    state = torch.load(best / "model.pt", weights_only=True)  # a plain state dict
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    arch = json.loads((best / "arch.json").read_text())
    assert arch["space"] == "mobile" and arch["input_shape"] == [1, 8, 8]
    # the run's best/ rebuilds through compress's loader (no unpickling)
    model = load_model(run)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0 and (tmp_path / "ok" / "model.onnx").is_file(), res.output
    marker = tmp_path / "pwned"
    crafted_pickle(best / "model.pt", marker)
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 2, res.output
    assert not marker.exists()
    assert "does not unpickle" in res.output and "Traceback" not in res.output
    # a run without card.json: one line, exit 2
    (best / "card.json").unlink()
    torch.save(state, best / "model.pt")
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 2 and "card.json: missing" in res.output
    assert "Traceback" not in res.output
