"""A new user's first hour: what they really type wrong, through the real CLI (typer's runner
on ``nasforge.cli.app``). Each case is one clear ``error:`` line naming the field or file and
what to do, exit code 2, no traceback, and nothing created or lost on the way."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nasforge.cli import _internal_error, app

runner = CliRunner()
BASE = "name: t\ndata: {name: digits}\nsearch: {trials: 1, executor: inline}\n"


def invoke(*args: str | Path):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res


def refused(*args: str | Path) -> str:
    """The CLI's output for input it must refuse with exit code 2."""
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output
    return " ".join(res.output.split())


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- configs -----------------------------------------------------------------------------


def test_a_repeated_section_is_refused_not_silently_dropped(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", BASE + "search:\n  trials: 5\n")
    out = refused("doctor", cfg)
    assert "line 4" in out and "duplicate key 'search', also on line 3" in out


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    from nasforge.yamlfile import parse_yaml

    data = parse_yaml("base: &b {trials: 3, workers: 1}\nsearch: {<<: *b, trials: 4}\n", "x")
    assert data["search"] == {"trials": 4, "workers": 1}


def test_a_folder_given_as_the_config(tmp_path: Path) -> None:
    out = refused("search", tmp_path, "--runs-dir", tmp_path / "runs")
    assert "is a folder, not a config file" in out


@pytest.mark.parametrize(
    "section, expected",
    [
        (
            "data: mnist5k\n",
            "data: expected a mapping of fields, got the text 'mnist5k'; did "
            "you mean `data: {name: mnist5k}`?",
        ),
        ("train:\n#  epochs: 3\n", "train: is empty; give its fields as a mapping"),
        ("final: 5\n", "final: expected a mapping of fields (`final: {epochs: ...}`), got int 5"),
    ],
)
def test_a_section_that_is_not_a_mapping(tmp_path: Path, section: str, expected: str) -> None:
    out = refused("doctor", write(tmp_path / "c.yaml", "name: t\n" + section))
    assert expected in out
    assert "instance of" not in out  # pydantic's wording, not the user's


@pytest.mark.parametrize(
    "section, expected",
    [
        (
            "strategy: {name: evolution, options: {populaton: 4}}\n",
            "strategy.options.populaton: strategy 'evolution' has no option 'populaton'; "
            "did you mean 'population'?",
        ),
        (
            "space: {name: mobile, options: {stagez: []}}\n",
            "space.options.stagez: space 'mobile' has no option 'stagez'; did you mean 'stages'?",
        ),
    ],
)
def test_an_option_typo_names_the_option(tmp_path: Path, section: str, expected: str) -> None:
    cfg = write(tmp_path / "c.yaml", BASE + section)
    for cmd in (["doctor", cfg], ["search", cfg, "--runs-dir", tmp_path / "runs"]):
        out = refused(*cmd)
        assert expected in out and "__init__" not in out
    assert not (tmp_path / "runs").exists()  # refused at load: no run directory made


def test_doctor_flags_a_positive_weighted_product_exponent(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.yaml", BASE + "objective: {kind: weighted_product, target: 2, w: 0.5}\n"
    )
    res = invoke("doctor", cfg)
    assert res.exit_code == 1 and "objective.w: w = 0.5 is positive" in " ".join(res.output.split())


def test_doctor_says_how_to_build_a_missing_table(tmp_path: Path) -> None:
    table = tmp_path / "t.json"
    cfg = write(
        tmp_path / "c.yaml",
        BASE + f"latency: {{mode: predict, table: {table}}}\n",
    )
    res = invoke("doctor", cfg)
    out = " ".join(res.output.split())
    assert res.exit_code == 1
    assert out.count("does not exist") == 1  # one finding, not the same line twice
    assert "nasforge latency build --space mobile --input-shape 1,8,8" in out
    assert f"--out {table}" in out
    out = refused("search", cfg, "--runs-dir", tmp_path / "runs")  # the search says it too
    assert "nasforge latency build --space mobile --input-shape 1,8,8" in out


# --- run directories ------------------------------------------------------------------------


def test_runs_dir_that_is_a_file_is_refused_before_the_run(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", BASE)
    blocker = write(tmp_path / "runs", "not a folder")
    out = refused("search", cfg, "--runs-dir", blocker)
    assert "runs_dir: cannot create" in out and "is a file" in out
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["show", "repair", "export"])
def test_a_mistyped_run_path_is_named_and_not_created(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "runs" / "quickstrat"
    out = refused(command, missing)
    assert "no such folder" in out
    assert not missing.exists()  # repair used to create it (and a .lock inside)


def test_show_refuses_a_non_positive_top(tmp_path: Path) -> None:
    res = invoke("show", tmp_path, "--top", "0")
    assert res.exit_code == 2


def test_ofa_list_of_a_search_run_says_it_is_not_an_ofa_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "trials.db").write_bytes(b"")
    write(run / "config.yaml", BASE)
    out = refused("ofa", "list", run)
    assert "not an OFA run" in out and f"nasforge show {run}" in out


# --- model files for compress ---------------------------------------------------------------


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


def _wide() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10))


NOT_CALLABLE = 3


def _raises() -> nn.Module:
    raise RuntimeError("needs a GPU")


@pytest.fixture()
def factory_module(monkeypatch: pytest.MonkeyPatch) -> str:
    """This test module, importable by ``--model-factory`` as ``test_cli_newuser``."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    sys.modules.setdefault("test_cli_newuser", sys.modules[__name__])
    return "test_cli_newuser"


def compress(tmp_path: Path, model: Path, *args: str) -> str:
    return refused(
        "compress",
        model,
        "--out",
        tmp_path / "out",
        "--prune",
        "none",
        "--quantize",
        "none",
        "--finetune-epochs",
        "0",
        *args,
    )


def test_compress_a_text_file_named_pt(tmp_path: Path) -> None:
    out = compress(tmp_path, write(tmp_path / "w.pt", "hello"))
    assert "is not a torch.save file" in out


@pytest.mark.parametrize(
    "factory, expected",
    [
        ("NOT_CALLABLE", "is not callable (a int object)"),
        ("_raises", "_raises() raised RuntimeError: needs a GPU"),
        ("_wide", "shapes differ (file vs module): 3 (0.weight (4, 1, 3, 3) vs (8, 1, 3, 3)"),
    ],
)
def test_compress_with_a_factory_that_does_not_fit(
    tmp_path: Path, factory_module: str, factory: str, expected: str
) -> None:
    weights = tmp_path / "w.pt"
    torch.save(_net().state_dict(), weights)
    out = compress(tmp_path, weights, "--model-factory", f"{factory_module}:{factory}")
    assert expected in out


def test_compress_a_training_checkpoint_says_where_the_weights_are(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": _net().state_dict(), "epoch": 3}, ckpt)
    out = compress(tmp_path, ckpt)
    assert "checkpoint dict (keys 'model', 'epoch')" in out
    assert "torch.save(checkpoint['model'], 'weights.pt')" in out


def test_compress_an_arch_json_that_is_not_an_object(tmp_path: Path) -> None:
    best = tmp_path / "best"
    best.mkdir()
    torch.save(_net().state_dict(), best / "model.pt")
    write(best / "arch.json", "[1, 2]")
    out = compress(tmp_path, best)
    assert "arch.json: not a nasforge arch description" in out and "got a JSON list" in out


def test_compress_a_pt2_that_is_no_archive_is_not_called_unsafe(tmp_path: Path) -> None:
    out = compress(tmp_path, write(tmp_path / "m.pt2", "garbage"))
    assert "is not an exported program" in out and "can run code" not in out


def test_compress_out_is_a_file(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(_net().state_dict(), weights)
    blocker = write(tmp_path / "out", "mine")
    out = compress(tmp_path, weights)
    assert "--out:" in out and "is a file" in out and blocker.read_text() == "mine"


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "space: {name: mobile}\n", "is an experiment config (data, name, search, space)"),
        (
            "prune: {method: channel}\nquantise: {mode: int8}\n",
            "compress.quantise: unknown field; did you mean 'quantize'?",
        ),
    ],
)
def test_compress_config_mistakes(tmp_path: Path, text: str, expected: str) -> None:
    weights = tmp_path / "w.pt"
    torch.save(_net().state_dict(), weights)
    out = compress(tmp_path, weights, "--config", str(write(tmp_path / "c.yaml", text)))
    assert expected in out


def test_compress_input_shape_message_has_no_pydantic_prefix(tmp_path: Path) -> None:
    out = compress(tmp_path, tmp_path, "--input-shape", "3,x,32")
    assert "compress.input_shape: expected C,H,W" in out and "Value error" not in out


# --- latency tables -------------------------------------------------------------------------


def test_latency_build_into_a_folder_is_refused_before_measuring(tmp_path: Path) -> None:
    out = refused(
        "latency", "build", "--space", "mobile", "--input-shape", "1,8,8", "--out", tmp_path
    )
    assert "--out:" in out and "is a folder; give a file name" in out


def test_latency_build_option_typo(tmp_path: Path) -> None:
    out = refused("latency", "build", "--out", tmp_path / "t.json", "--option", "stagez=1")
    assert "--option stagez: space 'mobile' has no option 'stagez'; did you mean 'stages'?" in out


# --- the last resort --------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        raise KeyError("boom")
    except KeyError as exc:
        code = _internal_error(exc)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    line = " ".join(err.split())
    assert "internal error: KeyError: 'boom'; the full traceback is in" in line
    crash = Path(line.split("the full traceback is in ")[1].split(" (attach")[0])
    try:
        assert "Traceback" in crash.read_text() and "KeyError" in crash.read_text()
    finally:
        crash.unlink()


def test_export_out_that_is_a_file_is_refused_before_any_retraining(tmp_path: Path) -> None:
    from nasforge.experiment.store import TrialStore

    run = tmp_path / "run"
    run.mkdir()
    with TrialStore(run / "trials.db"):
        pass
    write(run / "config.yaml", BASE)
    blocker = write(tmp_path / "onnx", "mine")
    out = refused("export", run, "--out", blocker)
    assert "--out:" in out and "is a file" in out
    assert not (run / "best").exists()  # refused before the best trial was retrained


def test_a_plugin_beside_the_config_names_the_pythonpath(tmp_path: Path) -> None:
    write(tmp_path / "my_newuser_plugin.py", "X = 1\n")
    cfg = write(tmp_path / "c.yaml", "plugins: [my_newuser_plugin]\n" + BASE)
    out = refused("doctor", cfg)
    assert f"run with PYTHONPATH={tmp_path}" in out


@pytest.mark.parametrize(
    "command, section",
    [
        (["search"], ""),
        (["scale"], "scaling: {}\n"),
        (["ofa", "train"], "ofa: {}\n"),
    ],
)
def test_resume_of_a_run_that_does_not_exist_leaves_no_folder(
    tmp_path: Path, command: list[str], section: str
) -> None:
    cfg = write(tmp_path / "c.yaml", BASE + section)
    runs = tmp_path / "runs"
    out = refused(*command, cfg, "--runs-dir", runs, "--resume")
    assert "nothing to resume (no such run directory)" in out
    assert not runs.exists()  # a .lock in an otherwise empty run folder used to be left


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "name: t\nsearch:\n\ttrials: 3\n",
            "line 3, column 1: not valid YAML (found character "
            "'\\t' that cannot start any token; YAML indents with spaces, not tabs)",
        ),
        (
            "name: t\nsearch: {trials: 1e3}\n",
            "search.trials: Input should be a valid integer, "
            "unable to parse string as an integer (got '1e3'); YAML reads 1e3 as text",
        ),
    ],
)
def test_yaml_surprises_are_explained(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refused("doctor", write(tmp_path / "c.yaml", text))


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latency table of a tiny NB201 space (seconds to build)."""
    path = tmp_path_factory.mktemp("table") / "t.json"
    tiny = "--space nb201 --input-shape 3,8,8 --option C=4 --option N=1 --calibration 0"
    res = runner.invoke(app, ["latency", "build", "--out", str(path), *tiny.split(), "--quiet"])
    assert res.exit_code == 0, res.output
    return path


def test_latency_predict_archs_file_mistakes(tiny_table: Path, tmp_path: Path) -> None:
    binary = tmp_path / "archs.bin"
    binary.write_bytes(b"\xff\xfe\x00arch")
    out = refused("latency", "predict", tiny_table, "--archs", binary)
    assert "is not a text file (one arch per line)" in out
    archs = write(tmp_path / "archs.txt", '\n{"x": 1}\n')  # a blank first line
    out = refused("latency", "predict", tiny_table, "--archs", archs)
    assert f"{archs}:2: " in out and "unknown label 'x'" in out  # the file's own line number
    out = refused("latency", "predict", tiny_table, "--arch", '{"x": 1}')
    assert "--arch #1: " in out and "unknown label 'x'" in out


@pytest.mark.parametrize("option", ["--plot", "--json"])
def test_latency_validate_output_into_a_folder_is_refused_before_measuring(
    tiny_table: Path, tmp_path: Path, option: str
) -> None:
    out = refused("latency", "validate", tiny_table, "--n", "2", option, tmp_path)
    assert f"{option}: {tmp_path} is a folder" in out and "verdict" not in out


def test_latency_diagnose_json_into_a_folder_is_refused_before_measuring(tmp_path: Path) -> None:
    out = refused("latency", "diagnose", "--json", tmp_path)
    assert f"--json: {tmp_path} is a folder" in out


@pytest.mark.slow  # a real build, interrupted once its table file is first saved (~10 s)
def test_ctrl_c_in_latency_build_says_what_is_kept_and_how_to_continue(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import time

    table = tmp_path / "t.json"
    cmd = [sys.executable, "-m", "nasforge.cli", "latency", "build", "--space", "mobile"]
    proc = subprocess.Popen(
        [*cmd, "--input-shape", "1,8,8", "--out", str(table), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's
    )
    try:
        deadline = time.time() + 300
        while not table.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    text = " ".join((out + err).split())
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert f"interrupted: the layers measured so far are kept in {table}" in text
    assert json.loads(table.read_text())["entries"]  # the partial table is whole JSON


def test_compress_a_run_folder_without_a_model_says_what_to_give(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "trials.db").write_bytes(b"")
    out = compress(tmp_path, run)
    assert "is a run without a trained best model" in out and f"nasforge export {run}" in out
    (run / "specialized" / "cpu_1ms").mkdir(parents=True)
    out = compress(tmp_path, run)
    assert "is a Once-for-All run; give one of its specialisations" in out
    assert str(run / "specialized" / "cpu_1ms") in out
    out = compress(tmp_path, tmp_path / "run" / "specialized")  # a folder with no model at all
    assert "holds no model.pt; give a run's best/ folder" in out


def test_show_of_a_scale_run_points_at_its_results(tmp_path: Path) -> None:
    run = tmp_path / "scale"
    run.mkdir()
    write(run / "scaling.json", "{}")
    out = refused("show", run)
    assert "a `nasforge scale` run (no trials.db): its results are" in out


def test_the_compress_example_given_to_search_is_not_a_default_search(tmp_path: Path) -> None:
    example = Path(__file__).parents[1] / "examples" / "compress.yaml"
    for cmd in (["search", example, "--runs-dir", tmp_path / "runs"], ["doctor", example]):
        out = refused(*cmd)
        assert "a compression config (only a compress: section)" in out
        assert f"nasforge compress MODEL --config {example}" in out
    assert not (tmp_path / "runs").exists()


def test_compress_knows_every_section_of_a_search_config() -> None:
    """`nasforge compress --config` names a search config for what it is by its sections; the
    list lives below the experiment layer, so it is pinned to the config's fields here."""
    from nasforge.compression.cli import _EXPERIMENT_SECTIONS
    from nasforge.experiment.config import ExperimentConfig

    own = {"compress", "plugins", "seed"}  # keys a compression config may share
    assert _EXPERIMENT_SECTIONS == frozenset(ExperimentConfig.model_fields) - own
