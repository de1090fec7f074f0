"""Input that must be refused, and exit codes that tell the truth (issue 11).

Each config problem is one line naming the file or field, exit 2, before any trial; doctor
runs the same validation as search; a search whose every trial failed exits 1; user and
exception text is printed verbatim (not read as rich markup).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.evaluators import (
    Evaluator,
    EvaluatorContext,
    Result,
    list_evaluators,
    register_evaluator,
)
from nasforge.evaluators.table import NB201_CIFAR10_FILE, shared_data_dir

runner = CliRunner()
BASE = (
    "data: {name: digits}\nsearch: {trials: 2, executor: inline}\ntrain: {epochs: 1}\n"
    "strategy: {name: random}\nlatency: {repeats: 3, warmup: 0}\nfinal: {epochs: 0}\n"
)
HAS_NB201 = (shared_data_dir() / NB201_CIFAR10_FILE).is_file()


def write(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return cfg


def search(tmp_path: Path, text: str, *args: str) -> Any:
    cfg = write(tmp_path, text)
    return runner.invoke(
        app, ["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet", *args]
    )


def one_error(res: Any) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "null\n"])
def test_an_empty_config_is_refused(tmp_path: Path, text: str) -> None:
    line = one_error(search(tmp_path, text))
    assert "config file is empty" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "name, shown", [('"a\\0b"', "control character"), ("x" * 300, "300 characters")]
)
def test_bad_run_names_are_one_line_naming_name(tmp_path: Path, name: str, shown: str) -> None:
    line = one_error(search(tmp_path, f"name: {name}\n" + BASE))
    assert "name: must be a plain folder name" in line and shown in line


def test_bad_name_on_the_command_line(tmp_path: Path) -> None:
    line = one_error(search(tmp_path, "name: ok\n" + BASE, "--name", "a\tb"))
    assert "name: must be a plain folder name" in line


@pytest.mark.parametrize(
    "text, where",
    [
        ("name: x\ndata: {name: digits\n", "line 3"),
        ("name: x\nseed: !!python/object/apply:os.system ['echo pwned']\n", "line 2"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    line = one_error(search(tmp_path, text))
    assert str(tmp_path / "c.yaml") in line and where in line and "not valid YAML" in line


def test_first_line_says_where_the_run_goes(tmp_path: Path) -> None:
    res = search(tmp_path, "name: here\n" + BASE, "--no-final")
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first == f"run directory: {(tmp_path / 'runs' / 'here').resolve()}"


def test_objective_metric_nobody_produces_stops_before_any_trial(tmp_path: Path) -> None:
    text = "name: m\n" + BASE + "objective: {metric: test_acc}\n"
    line = one_error(search(tmp_path, text))
    assert "objective.metric" in line and "produces no 'test_acc'" in line
    assert not (tmp_path / "runs" / "m" / "trials.db").exists()
    res = runner.invoke(app, ["doctor", str(tmp_path / "c.yaml")])
    assert res.exit_code == 1 and "produces no 'test_acc'" in res.output
    text = (
        "name: m2\n"
        + BASE
        + "objective: {kind: weighted_product, cost_metric: energy_mj, target: 1.0}\n"
    )
    line = one_error(search(tmp_path, text))
    assert "objective.cost_metric" in line and "energy_mj" in line


@pytest.mark.skipif(not HAS_NB201, reason="NAS-Bench-201 table not in shared data")
@pytest.mark.parametrize(
    "table, expected",
    [
        ("{preset: nb201, signal_col: x}", "signal_col"),
        ("{preset: nb201_cifar100}", "nb201_cifar100"),
    ],
)
def test_table_evaluator_config_errors_stop_before_any_trial(
    tmp_path: Path, table: str, expected: str
) -> None:
    text = (
        "name: t\nspace: {name: nb201}\nstrategy: {name: random}\nsearch: {trials: 3}\n"
        f"evaluator: {{kind: table, table: {table}}}\n"
    )
    line = one_error(search(tmp_path, text))
    assert expected in line
    assert not (tmp_path / "runs" / "t" / "trials.db").exists()
    res = runner.invoke(app, ["doctor", str(tmp_path / "c.yaml")])
    assert res.exit_code == 1 and expected in res.output and "no problems" not in res.output


@pytest.mark.parametrize(
    "section, expected",
    [
        ("space: {name: mobilenet}\n", "space.name"),
        ("strategy: {name: evolutoin}\n", "strategy"),
        ("data: {name: imagenet}\n", "data.name"),
    ],
)
def test_doctor_reports_unknown_names_as_errors(
    tmp_path: Path, section: str, expected: str
) -> None:
    key = section.split(":")[0]
    text = "name: d\n" + "".join(
        line + "\n" for line in BASE.splitlines() if not line.startswith(key)
    )
    res = runner.invoke(app, ["doctor", str(write(tmp_path, text + section))])
    assert res.exit_code == 1, res.output
    assert f"error {expected}" in res.output


def test_doctor_flags_a_budget_under_the_warm_up(tmp_path: Path) -> None:
    text = "name: d\n" + BASE.replace(
        "{name: random}", "{name: evolution, options: {population: 50}}"
    )
    res = runner.invoke(app, ["doctor", str(write(tmp_path, text))])
    assert "search.trials" in res.output and "warm-up of 50" in res.output
    assert "no problems found" not in res.output


class _Fails(Evaluator):
    def evaluate(self, arch: Any, budget: Any = None, reporter: Any = None) -> Result:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:83] err == 0. [bold]x[/bold]")


def _fails(context: EvaluatorContext, **options: Any) -> Evaluator:
    return _Fails()


class _Declares(Evaluator):
    def evaluate(self, arch: Any, budget: Any = None, reporter: Any = None) -> Result:
        return Result({"score_a": 1.0}, 0.0)


def _declares(context: EvaluatorContext, **options: Any) -> Evaluator:
    return _Declares()


@pytest.fixture
def toy_evaluators() -> Any:
    before = {e.name for e in list_evaluators()}
    register_evaluator("test_fails", _fails, "always fails", needs_data=False)
    register_evaluator("test_declares", _declares, "score_a", needs_data=False, metrics=["score_a"])
    yield
    from nasforge import evaluators

    for name in ("test_fails", "test_declares"):
        if name not in before:
            evaluators._REGISTRY.pop(name, None)


TOY = (
    "name: toy\nspace: {name: nb201}\nstrategy: {name: random}\n"
    "search: {trials: 2, executor: inline}\n"
)


def test_every_trial_failed_exits_1_and_error_text_is_verbatim(
    tmp_path: Path, toy_evaluators: Any
) -> None:
    res = search(tmp_path, TOY + "evaluator: {kind: test_fails}\n")
    assert res.exit_code == 1, res.output
    assert "[enforce fail at alloc_cpu.cpp:83] err == 0. [bold]x[/bold]" in res.output
    assert "no trial completed (2 failed)" in res.output


def test_a_registered_metrics_declaration_is_checked(tmp_path: Path, toy_evaluators: Any) -> None:
    line = one_error(search(tmp_path, TOY + "evaluator: {kind: test_declares}\n"))
    assert "objective.metric" in line and "'val_acc'" in line and "score_a" in line
    res = search(tmp_path, TOY + "evaluator: {kind: test_declares}\nobjective: {metric: score_a}\n")
    assert res.exit_code == 0, res.output


def test_markup_in_a_config_error_prints_verbatim(tmp_path: Path) -> None:
    line = one_error(search(tmp_path, "name: x\n" + BASE + "space: {name: '[red]sp[/red]'}\n"))
    assert "[red]sp[/red]" in line
