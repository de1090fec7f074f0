"""Extending nasforge from outside, as a user would: a plugin module written at test time,
listed in a config's ``plugins:``, registers a toy space, strategy and evaluator that the CLI
then uses like built-in ones; bad plugins and bad factories fail with one clear line."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import RegistrationError
from nasforge.evaluators import register_evaluator
from nasforge.space import Categorical, SearchSpace
from nasforge.spaces import register_space
from nasforge.strategies import register_strategy

runner = CliRunner()
_ids = itertools.count()

PLUGIN = '''
"""A user's plugin: a toy space, a strategy and an evaluator, registered on import."""
import numpy as np
from torch import nn

from nasforge.evaluators import Evaluator, Result, register_evaluator
from nasforge.space import Categorical, SearchSpace
from nasforge.spaces import register_space
from nasforge.strategies import Strategy, register_strategy


class WidthSpace(SearchSpace):
    def __init__(self, input_shape, num_classes, widths=(4, 8, 16)):
        dims = [Categorical("width", tuple(widths)), Categorical("act", ("relu", "tanh"))]
        super().__init__(dims, name="{space}")
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def build(self, arch):
        act = nn.ReLU() if arch["act"] == "relu" else nn.Tanh()
        n_in = int(np.prod(self.input_shape))
        return nn.Sequential(nn.Flatten(), nn.Linear(n_in, arch["width"]), act,
                             nn.Linear(arch["width"], self.num_classes))


def make_space(input_shape, num_classes, **options):
    return WidthSpace(input_shape, num_classes, **options)


class FirstDimStrategy(Strategy):
    """Samples uniformly; records that the plugin's class was used."""
    name = "{strategy}"

    def _propose(self):
        return self.space.sample(self.rng)


class WidthEvaluator(Evaluator):
    """No data: the score is the width (a made-up analytic benchmark)."""
    def __init__(self, context, scale=1.0):
        self.scale = scale

    def evaluate(self, arch, budget=None, reporter=None):
        return Result({{"val_acc": self.scale * arch["width"] / 16, "latency_ms": 1.0}}, 0.0)


register_space("{space}", make_space, "a toy width space from a plugin")
register_strategy("{strategy}", FirstDimStrategy)
register_evaluator("{evaluator}", WidthEvaluator, "width as score", needs_data=False)
'''


def write_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None = None) -> dict:
    n = next(_ids)
    names = {
        "module": f"user_nas_plugin_{n}",
        "space": f"toywidth{n}",
        "strategy": f"toyfirst{n}",
        "evaluator": f"toywidth_eval{n}",
    }
    text = PLUGIN.format(**names) if body is None else body
    (tmp_path / f"{names['module']}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    return names


def write_config(tmp_path: Path, names: dict, **sections: str) -> Path:
    base = {
        "plugins": f"[{names['module']}]",
        "data": "{name: digits, limit: 400}",
        "space": f"{{name: {names['space']}, options: {{widths: [4, 8]}}}}",
        "strategy": f"{{name: {names['strategy']}}}",
        "search": "{trials: 3, executor: inline}",
        "train": "{epochs: 1}",
        "latency": "{mode: flops}",
    }
    base.update(sections)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: plug\nruns_dir: {tmp_path / 'runs'}\n"
        + "".join(f"{k}: {v}\n" for k, v in base.items())
    )
    return cfg


def test_search_uses_a_plugins_space_and_strategy(tmp_path: Path, monkeypatch) -> None:
    names = write_plugin(tmp_path, monkeypatch)
    cfg = write_config(tmp_path, names)
    res = runner.invoke(app, ["search", str(cfg), "--quiet", "--no-final"])
    assert res.exit_code == 0, res.output
    from nasforge.experiment.store import TrialStore

    with TrialStore(tmp_path / "runs" / "plug" / "trials.db") as store:
        trials = store.trials(("complete",))
    assert len(trials) == 3
    assert {t.arch["width"] for t in trials} <= {4, 8}  # the space's own option was applied
    assert all("mflops" in t.metrics and "latency_ms" not in t.metrics for t in trials)
    saved = (tmp_path / "runs" / "plug" / "config.yaml").read_text()
    assert names["module"] in saved  # the run records which plugins it needs


def test_a_plugins_evaluator_replaces_training(tmp_path: Path, monkeypatch) -> None:
    names = write_plugin(tmp_path, monkeypatch)
    cfg = write_config(
        tmp_path,
        names,
        evaluator=f"{{kind: {names['evaluator']}, options: {{scale: 2.0}}}}",
        strategy="{name: random}",
    )
    res = runner.invoke(app, ["search", str(cfg), "--quiet", "--no-final"])
    assert res.exit_code == 0, res.output
    from nasforge.experiment.store import TrialStore

    with TrialStore(tmp_path / "runs" / "plug" / "trials.db") as store:
        accs = sorted(t.metrics["val_acc"] for t in store.trials(("complete",)))
    assert set(accs) <= {0.5, 1.0} and len(accs) == 3  # scale 2 * width / 16


def test_spaces_and_plugins_commands_list_what_a_plugin_added(tmp_path: Path, monkeypatch):
    names = write_plugin(tmp_path, monkeypatch)
    cfg = write_config(tmp_path, names)
    res = runner.invoke(app, ["spaces", "--config", str(cfg)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if names["space"] in line)
    assert f"plugin {names['module']}" in row
    assert "mobile" in res.output  # built-ins still listed
    res = runner.invoke(app, ["plugins", "--plugin", names["module"]], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for what in (f"space {names['space']}", f"strategy {names['strategy']}"):
        assert what in res.output


def test_doctor_loads_plugins(tmp_path: Path, monkeypatch) -> None:
    names = write_plugin(tmp_path, monkeypatch)
    cfg = write_config(tmp_path, names, evaluator=f"{{kind: {names['evaluator']}}}")
    res = runner.invoke(app, ["doctor", str(cfg)])
    assert "unknown evaluator" not in res.output
    assert res.exit_code in (0, 1), res.output


@pytest.mark.parametrize(
    "body, cause",
    [
        ("import no_such_dependency_xyz\n", "No module named 'no_such_dependency_xyz'"),
        ("raise RuntimeError('plugin exploded')\n", "RuntimeError: plugin exploded"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_a_broken_plugin_is_one_line_with_exit_2(tmp_path: Path, monkeypatch, body, cause):
    names = write_plugin(tmp_path, monkeypatch, body)
    cfg = write_config(tmp_path, names)
    for args in (["search", str(cfg), "--quiet"], ["doctor", str(cfg)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
        assert names["module"] in lines[0] and cause in lines[0]
        assert "Traceback" not in res.output


def test_a_missing_plugin_module_names_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins: [not_installed_anywhere]\n")
    res = runner.invoke(app, ["search", str(cfg)])
    assert res.exit_code == 2
    assert "plugins: cannot load plugin 'not_installed_anywhere'" in res.output


# -- factory contracts, checked at registration -------------------------------------------------
def _toy() -> SearchSpace:
    return SearchSpace([Categorical("a", (1, 2))], name="t")


def test_register_space_rejects_a_factory_without_input_shape() -> None:
    space = _toy()
    with pytest.raises(RegistrationError, match=r"must accept input_shape, num_classes \(or"):
        register_space("bad_lambda_space", lambda: space)
    with pytest.raises(RegistrationError, match="must be callable"):
        register_space("bad_object_space", space)  # type: ignore[arg-type]
    from nasforge.spaces import list_spaces

    assert "bad_lambda_space" not in {e.name for e in list_spaces()}


def test_register_space_accepts_kwargs_and_the_named_parameters() -> None:
    register_space("ok_kwargs_space", lambda **kw: _toy(), "any keywords")
    register_space("ok_named_space", lambda input_shape, num_classes, depth=2: _toy())
    from nasforge.spaces import create_space

    assert create_space("ok_named_space", (1, 8, 8), 10, depth=3).name == "t"


def test_register_strategy_and_evaluator_check_their_contracts() -> None:
    class NoConstraint:
        def __init__(self, space, seed=0):  # too old: no constraint keyword
            pass

    with pytest.raises(RegistrationError, match="register_strategy.*constraint"):
        register_strategy("bad_strategy", NoConstraint)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="register_evaluator"):
        register_evaluator("bad_evaluator", lambda: None)  # type: ignore[arg-type]


def test_a_bad_factory_in_a_plugin_fails_when_the_plugin_loads(tmp_path, monkeypatch) -> None:
    body = (
        "from nasforge.space import Categorical, SearchSpace\n"
        "from nasforge.spaces import register_space\n"
        "space = SearchSpace([Categorical('a', (1, 2))])\n"
        "register_space('lambda_space', lambda: space)\n"
    )
    names = write_plugin(tmp_path, monkeypatch, body)
    res = runner.invoke(app, ["spaces", "--plugin", names["module"]])
    assert res.exit_code == 2
    assert "must accept input_shape, num_classes (or **kwargs)" in res.output
    assert json.dumps(names["module"])[1:-1] in res.output


def test_entry_point_plugins_are_loaded_once_lazily(tmp_path: Path, monkeypatch) -> None:
    import nasforge.plugins as plugins

    n = next(_ids)
    module, space = f"user_ep_plugin_{n}", f"epspace{n}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            from nasforge.space import Categorical, SearchSpace
            from nasforge.spaces import register_space

            CALLS = []

            def register():
                CALLS.append(1)
                register_space(
                    "{space}",
                    lambda input_shape, num_classes, **kw: SearchSpace([Categorical("a", (1, 2))]),
                    "from an entry point",
                )
            """
        )
    )
    dist = tmp_path / f"user_ep_dist_{n}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: user-ep-dist-{n}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[nasforge.plugins]\ntoy{n} = {module}:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    res = runner.invoke(app, ["spaces"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if space in line)
    assert f"plugin entry point toy{n}" in row
    plugins.load_plugins()  # a second load does not import or call it again
    import importlib

    assert importlib.import_module(module).CALLS == [1]


def test_a_plugin_registers_a_backend_and_a_compression_stage(tmp_path, monkeypatch) -> None:
    n = next(_ids)
    body = f'''
    from dataclasses import dataclass

    from nasforge.compression import Stage, StageOutput, register_stage
    from nasforge.hardware.backends import TorchBackend, register_backend


    class MyBoard(TorchBackend):
        """A user's target (here timed like torch)."""


    @dataclass(frozen=True)
    class NoopConfig:
        pass


    class Noop(Stage[NoopConfig]):
        config_cls = NoopConfig

        def run(self, state):
            return StageOutput(self.name, "nothing", state.accuracy(state.model))


    register_backend("myboard{n}", MyBoard, replace=True)
    register_stage("noop{n}", Noop)
    '''
    names = write_plugin(tmp_path, monkeypatch, body)
    cfg = write_config(tmp_path, names, latency=f"{{mode: measure, backend: myboard{n}}}")
    res = runner.invoke(app, ["plugins", "--config", str(cfg)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if names["module"] in line)
    assert f"backend myboard{n}" in row and f"stage noop{n}" in row


def test_worker_processes_load_the_plugins_too(tmp_path: Path, monkeypatch) -> None:
    """The default executor evaluates in other processes: they import the config's plugins."""
    names = write_plugin(tmp_path, monkeypatch)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cfg = write_config(tmp_path, names, search="{trials: 2, executor: process, workers: 1}")
    res = runner.invoke(app, ["search", str(cfg), "--quiet", "--no-final"])
    assert res.exit_code == 0, res.output
    from nasforge.experiment.store import TrialStore

    with TrialStore(tmp_path / "runs" / "plug" / "trials.db") as store:
        assert store.count(("complete",)) == 2, [t.error for t in store.trials(("failed",))]
