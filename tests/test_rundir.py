"""One run-directory preparation for ``search``, ``scale`` and ``ofa train``: the same
refusals (one line, naming the file or the run), the same config write, the same lock and
resume command, reached through each command's own class."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import ConfigError
from nasforge.experiment.config import ExperimentConfig, load_config
from nasforge.experiment.lock import RunLocked
from nasforge.experiment.ofa_run import OFA_RUN, OFATraining
from nasforge.experiment.rundir import RunDir, RunKind
from nasforge.experiment.runner import SEARCH_RUN, Experiment
from nasforge.experiment.scaling import SCALING_RUN, ScalingRun
from nasforge.experiment.store import StoreError, TrialStore

EXAMPLES = Path(__file__).parent.parent / "examples"
#: each command's kind, an example config of it, and an edit of a section its resume may
#: change and of one it must keep
KINDS = {
    "search": (SEARCH_RUN, "quickstart.yaml", ("search", "trials", 3), ("seed", None, 99)),
    "scale": (SCALING_RUN, "scale.yaml", ("search", "trials", 3), ("train", "epochs", 99)),
    "ofa": (OFA_RUN, "ofa.yaml", ("latency", "threads", 2), ("seed", None, 99)),
}


def edited(cfg: ExperimentConfig, edit: tuple[str, str | None, object]) -> ExperimentConfig:
    section, field, value = edit
    if field is None:
        return cfg.model_copy(update={section: value})
    part = getattr(cfg, section).model_copy(update={field: value})
    return cfg.model_copy(update={section: part})


def make_marker(run: Path, kind: RunKind) -> None:
    """What the command leaves when it ran: its store or its results file."""
    run.mkdir(parents=True, exist_ok=True)
    if kind.has_store:
        TrialStore(run / kind.marker, create=True).close()
    else:
        (run / kind.marker).write_text('{"format": "nasforge-scaling/1", "points": {}}')


@pytest.mark.parametrize("name", sorted(KINDS))
def test_new_run_then_exists_then_resume_with_the_same_or_another_config(
    tmp_path: Path, name: str
) -> None:
    kind, example, may_change, must_keep = KINDS[name]
    cfg = load_config(EXAMPLES / example)
    run = tmp_path / "runs" / "r"
    rd = RunDir(run, cfg, kind)
    with pytest.raises(ConfigError, match=rf"nothing to resume \(no {kind.marker}\)") as info:
        rd.prepare(resume=True)
    assert "\n" not in str(info.value) and not run.exists()

    rd.prepare(resume=False)  # a new run: the directory and its config, as run
    assert load_config(run / "config.yaml") == cfg
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # no temp file left

    make_marker(run, kind)
    with pytest.raises(ConfigError, match=f"a {kind.noun} with this name exists"):
        rd.prepare(resume=False)

    RunDir(run, edited(cfg, may_change), kind).prepare(resume=True)
    assert load_config(run / "config.yaml") == edited(cfg, may_change)  # written as resumed
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="differs from the one this run started with") as info:
        RunDir(run, edited(cfg, must_keep), kind).prepare(resume=True)
    assert str(info.value).startswith(str(run / "config.yaml")) and "\n" not in str(info.value)
    assert (run / "config.yaml").read_text() == before  # a refusal writes nothing


@pytest.mark.parametrize(
    "kind, other",
    [(SEARCH_RUN, SCALING_RUN), (OFA_RUN, SCALING_RUN), (SCALING_RUN, SEARCH_RUN)],
    ids=["search-in-scale", "ofa-in-scale", "scale-in-search"],
)
def test_another_commands_run_is_refused_before_anything_is_written(
    tmp_path: Path, kind: RunKind, other: RunKind
) -> None:
    run = tmp_path / "r"
    make_marker(run, other)
    (run / "config.yaml").write_text("theirs")
    cfg = load_config(EXAMPLES / "quickstart.yaml")
    for resume in (False, True):
        with pytest.raises(ConfigError, match=rf"holds a .* run \({other.marker}\)"):
            RunDir(run, cfg, kind).prepare(resume)
    assert (run / "config.yaml").read_text() == "theirs"


@pytest.mark.parametrize("kind", [SEARCH_RUN, OFA_RUN], ids=["search", "ofa"])
@pytest.mark.parametrize("left", ["journal", "backups"])
def test_a_vanished_store_is_damage_not_a_fresh_start(
    tmp_path: Path, kind: RunKind, left: str
) -> None:
    run = tmp_path / "r"
    run.mkdir()
    if left == "journal":
        (run / "trials.jsonl").write_text('{"id": 1, "state": "complete"}\n')
    else:
        (run / "backups").mkdir()
    cfg = load_config(EXAMPLES / "quickstart.yaml")
    for resume in (False, True):
        with pytest.raises(StoreError, match=f"nasforge repair {run}"):
            RunDir(run, cfg, kind).prepare(resume)
    assert not (run / "trials.db").exists() and not (run / "config.yaml").exists()


def test_a_damaged_store_is_refused_on_resume_and_left_as_it_is(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    garbage = b"not a database" * 100
    (run / "trials.db").write_bytes(garbage)
    cfg = load_config(EXAMPLES / "quickstart.yaml")
    with pytest.raises(StoreError):
        RunDir(run, cfg, SEARCH_RUN).prepare(resume=True)
    assert (run / "trials.db").read_bytes() == garbage


def test_resume_command_names_the_run_directory_only_where_it_is_not_the_default(
    tmp_path: Path,
) -> None:
    cfg = load_config(EXAMPLES / "quickstart.yaml")
    default = Path(cfg.runs_dir) / cfg.name
    assert RunDir(default, cfg, SEARCH_RUN).resume_command() == (
        f"nasforge search {default / 'config.yaml'} --resume"
    )
    moved = tmp_path / "elsewhere" / cfg.name
    assert RunDir(moved, cfg, OFA_RUN).resume_command() == (
        f"nasforge ofa train {moved / 'config.yaml'} --resume --runs-dir {moved.parent}"
    )
    renamed = tmp_path / "other"
    assert RunDir(renamed, cfg, SCALING_RUN).resume_command("my.yaml") == (
        f"nasforge scale my.yaml --resume --runs-dir {tmp_path} --name other"
    )


def test_the_lock_is_one_writer_and_names_the_holders_command(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLES / "quickstart.yaml")
    with RunDir(tmp_path / "r", cfg, SCALING_RUN).locked():
        with pytest.raises(RunLocked, match=r"in use by process \d+ \(scale"):
            with RunDir(tmp_path / "r", cfg, SEARCH_RUN).locked():
                pass
    with RunDir(tmp_path / "r", cfg, SEARCH_RUN).locked():  # released: free again
        pass


def test_each_command_prepares_its_directory_through_the_shared_checks(tmp_path: Path) -> None:
    """The three commands' classes refuse the same directories before any work (the OFA
    training now also refuses a vanished store, as a search always did)."""
    quiet = Console(file=open(tmp_path / "console.txt", "w"))  # noqa: SIM115
    scaled = tmp_path / "scaled"
    make_marker(scaled, SCALING_RUN)
    search_cfg = load_config(EXAMPLES / "quickstart.yaml")
    with pytest.raises(ConfigError, match="holds a scaling run"):
        Experiment(search_cfg, scaled, console=quiet, progress=False).run()
    searched = tmp_path / "searched"
    make_marker(searched, SEARCH_RUN)
    with pytest.raises(ConfigError, match="holds a search run"):
        ScalingRun(load_config(EXAMPLES / "scale.yaml"), searched, quiet, False).run()
    lost = tmp_path / "lost"
    (lost / "backups").mkdir(parents=True)
    with pytest.raises(StoreError, match="the store is missing"):
        OFATraining(load_config(EXAMPLES / "ofa.yaml"), lost, quiet, False).run(resume=True)
    assert not (lost / "trials.db").exists()


def test_cli_refusal_is_one_line_with_exit_2(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "quickstart"
    make_marker(run, SCALING_RUN)
    cfg = EXAMPLES / "quickstart.yaml"
    res = CliRunner().invoke(
        app, ["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    )
    assert res.exit_code == 2, res.output
    assert "holds a scaling run (scaling.json)" in res.output.replace("\n", " ")
    assert "Traceback" not in res.output
