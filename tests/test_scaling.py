"""``nasforge scale``: compound scaling end to end, resume after kill -9, the dominance check,
the ``scaling:`` section's checks (issue 15, part E)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from runproc import wait_for
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import ConfigError
from nasforge.experiment.config import parse_config
from nasforge.experiment.scaling_base import base_arch, default_base
from nasforge.experiment.scaling_config import BASELINES
from nasforge.experiment.scaling_report import dominance, dominates, interpolate
from nasforge.modelfile import save_model
from nasforge.spaces.mobile import MobileSpace

SPACE = "{name: mobile, options: {stages: [[8, 1, 1], [16, 2, 2]], stem_channels: 8}}"


def write_config(tmp_path: Path, scaling: str, name: str = "s", space: str = SPACE) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\nruns_dir: {tmp_path / 'runs'}\ndata: {{name: digits, limit: 400}}\n"
        f"space: {space}\ntrain: {{epochs: 1, lr: 0.1, batch_size: 32}}\n"
        "latency: {backend: torch, repeats: 3, warmup: 0}\n"
        f"scaling: {scaling}\n"
    )
    return cfg


TINY = "{grid: {alpha: [1.2], beta: [1.1], gamma: [1.1, 1.15]}, tol: 0.3, phis: 1, ladder: 2"


def check_results(r: dict[str, Any], baselines: tuple[str, ...]) -> None:
    """What every finished scaling.json holds (steps 1 to 4)."""
    # step 1: two grid points near alpha*beta^2*gamma^2 = 2, the chosen one the most accurate
    assert len(r["grid"]) == 2
    chosen = next(
        g for g in r["grid"] if (g["alpha"], g["beta"], g["gamma"]) == tuple(r["chosen"].values())
    )
    assert r["points"][chosen["key"]]["val_acc"] == max(
        r["points"][g["key"]]["val_acc"] for g in r["grid"]
    )
    # step 2: B0 is the base, B1 the chosen grid point (not trained twice)
    fam = r["family"]
    assert [f["label"] for f in fam] == ["B0", "B1"] and fam[1]["key"] == chosen["key"]
    b0, b1 = (r["points"][f["key"]] for f in fam)
    assert b0["options"] == {
        "stages": [[8, 1, 1], [16, 2, 2]],
        "stem_channels": 8,
        "width_mult": 1.0,
        "depth_mult": 1.0,
        "resolution_mult": 1.0,
    }
    assert b0["arch"]["stage0/depth"] == 1 and b0["arch"]["stage1/depth"] == 2  # default base
    assert b1["params"] > b0["params"] and b1["input_size"] != b0["input_size"]
    # step 3: each baseline scales one dimension and starts at B0
    assert set(r["baselines"]) == set(baselines)
    for dim in baselines:
        members = r["baselines"][dim]
        assert members[0]["key"] == fam[0]["key"] and len(members) >= 2
        for m in members[1:]:
            p = r["points"][m["key"]]
            others = {"width", "depth", "resolution"} - {dim}
            assert p[dim] > 1.0 and all(p[o] == 1.0 for o in others)
    # step 4: test accuracy and measured latency with a verdict for family and baselines
    keys = {f["key"] for f in fam} | {m["key"] for ms in r["baselines"].values() for m in ms}
    for key in keys:
        p = r["points"][key]
        assert 0.0 <= p["test_acc"] <= 1.0 and p["latency_ms"] > 0
        assert p["latency_verdict"].startswith(("stable", "unstable"))
    assert set(r["dominance"]) == {"metric", *baselines}
    for dim in baselines:  # B1 is compared when it lies in the baseline's latency range
        comps = r["dominance"][dim]["comparisons"]
        assert [c["label"] for c in comps] == ["B1"]
    assert r["status"] == "done" and r["latency"]["backend"].startswith("torch")


def test_scale_end_to_end_then_resume_after_kill_skips_done_points(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TINY + ", baselines: [depth]}")
    run = tmp_path / "runs" / "s"
    results = run / "scaling.json"

    def points() -> int:
        try:
            return len(json.loads(results.read_text())["points"])
        except (OSError, ValueError, KeyError):
            return 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "nasforge.cli", "scale", str(cfg), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        wait_for(lambda: points() >= 1 or proc.poll() is not None, what="a first point")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = json.loads(results.read_text())["points"]
    assert before and all("val_acc" in p for p in before.values())
    # a run that exists is not restarted by mistake
    again = CliRunner().invoke(app, ["scale", str(cfg), "--quiet"])
    assert again.exit_code == 2 and "--resume" in again.output

    res = CliRunner().invoke(app, ["scale", str(cfg), "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads(results.read_text())
    for key, p in before.items():  # finished points were not trained again
        assert r["points"][key]["seconds"] == p["seconds"]
        assert r["points"][key]["val_accs"] == p["val_accs"]
    assert "done before" in (run / "progress.log").read_text()
    check_results(r, ("depth",))
    assert (run / "scaling.png").stat().st_size > 1000
    assert "B1" in (run / "scaling.html").read_text()
    assert "B1: test acc" in res.output


@pytest.mark.slow
def test_scale_with_the_three_baselines(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TINY + "}")
    res = CliRunner().invoke(app, ["scale", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    check_results(json.loads((tmp_path / "runs" / "s" / "scaling.json").read_text()), BASELINES)


def test_interpolate_and_dominance() -> None:
    curve = [(1.0, 0.5), (3.0, 0.9), (2.0, 0.6)]
    assert interpolate(curve, 2.5) == pytest.approx(0.75)
    assert interpolate(curve, 1.0) == 0.5 and interpolate(curve, 0.5) is None
    assert interpolate(curve, 3.5) is None and interpolate([(1.0, 0.2)], 1.0) == 0.2
    family = [("B0", 1.0, 0.5), ("B1", 2.0, 0.7), ("B2", 4.0, 0.95)]
    comps = dominance(family, curve)
    assert [c.ok for c in comps] == [True, True, None]  # B2 is beyond the baseline's range
    assert dominates(comps)
    worse = dominance([("B0", 1.0, 0.5), ("B1", 2.5, 0.7)], curve)
    assert [c.ok for c in worse] == [True, False] and not dominates(worse)
    assert dominates(dominance(family, curve[1:2] + [(5.0, 1.02)])) is False
    assert not dominates(dominance([("B0", 9.0, 1.0)], curve))  # nothing compared


@pytest.mark.parametrize(
    ("scaling", "message"),
    [
        ("{phis: 0}", "scaling.phis"),
        ("{grid: {alpha: [0.5]}}", "scaling.grid.alpha"),
        ("{grid: {alpha: [1.0], beta: [1.0], gamma: [1.0]}}", "no (alpha, beta, gamma)"),
        ("{baselines: [height]}", "scaling.baselines"),
        ("{seed: 3}", "scaling.seed: unknown field; did you mean 'seeds'?"),
        ("{base: ''}", "scaling.base"),
    ],
)
def test_bad_scaling_sections_exit_2_with_one_line(
    tmp_path: Path, scaling: str, message: str
) -> None:
    cfg = write_config(tmp_path, scaling)
    res = CliRunner().invoke(app, ["scale", str(cfg), "--quiet"])
    assert res.exit_code == 2, res.output
    assert message in res.output.replace("\n", " ") and "Traceback" not in res.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("latency: {mode: flops}", "latency.mode: compound scaling compares MEASURED latency"),
        ("space: {name: nb201}", "space.name: compound scaling scales the mobile space"),
        ("scaling: {base: nowhere/arch.json}", "scaling.base: nowhere/arch.json does not exist"),
        ("scaling: {base: {stage0/depth: 1}}", "scaling.base:"),
    ],
)
def test_what_scale_cannot_do_is_refused_naming_the_field(
    tmp_path: Path, extra: str, message: str
) -> None:
    cfg = write_config(tmp_path, "{phis: 1}")
    key = extra.split(":")[0]
    text = "".join(
        line + "\n" for line in cfg.read_text().splitlines() if not line.startswith(key + ":")
    )
    cfg.write_text(text + extra + "\n")
    res = CliRunner().invoke(app, ["scale", str(cfg), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert message in res.output.replace("\n", " ") and "Traceback" not in res.output
    no_section = tmp_path / "plain.yaml"
    no_section.write_text("data: {name: digits}\n")
    res = CliRunner().invoke(app, ["scale", str(no_section)])
    assert res.exit_code == 2 and "scaling: the config has no scaling: section" in res.output


def test_base_from_a_saved_arch_file_and_its_options_checked(tmp_path: Path) -> None:
    options = {"stages": [[8, 1, 1], [16, 2, 2]], "stem_channels": 8}
    space = MobileSpace((1, 8, 8), 10, **options)
    arch = space.make({**default_base(space), "stage1/depth": 2, **_block(1, 1)})
    save_model(space.build(arch), arch, tmp_path / "best", "mobile", (1, 8, 8), 10, options)
    assert base_arch(str(tmp_path), space, options) == arch.to_dict()  # a run dir
    assert base_arch(str(tmp_path / "best" / "arch.json"), space, options) == arch.to_dict()
    with pytest.raises(ConfigError, match="scaling.base: .* was made with space.options"):
        base_arch(str(tmp_path), space, {**options, "stem_channels": 16})
    cfg = parse_config({"space": {"options": options}, "scaling": {"base": arch.to_dict()}})
    assert cfg.scaling is not None and cfg.scaling.base == arch.to_dict()


def _block(stage: int, j: int) -> dict[str, object]:
    b = f"stage{stage}/block{j}"
    return {f"{b}/kernel": 5, f"{b}/expand": 3, f"{b}/se": True, f"{b}/act": "relu"}


def test_the_example_config_is_a_scaling_run() -> None:
    from nasforge.experiment.config import load_config
    from nasforge.experiment.scaling import check_scalable

    cfg = load_config(Path(__file__).parent.parent / "examples" / "scale.yaml")
    check_scalable(cfg)
    assert cfg.scaling is not None and len(cfg.scaling.grid_points()) >= 2


def test_a_second_process_on_the_same_run_is_refused(tmp_path: Path) -> None:
    from nasforge.experiment.lock import RunLock

    cfg = write_config(tmp_path, TINY + "}")
    with RunLock(tmp_path / "runs" / "s", "scale"):
        res = CliRunner().invoke(app, ["scale", str(cfg), "--quiet"])
    assert res.exit_code == 2 and "is in use by process" in res.output.replace("\n", " ")


def test_resume_refuses_another_config_and_a_missing_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TINY + "}")
    res = CliRunner().invoke(app, ["scale", str(cfg), "--resume", "--quiet"])
    assert res.exit_code == 2 and "nothing to resume" in res.output
    run = tmp_path / "runs" / "s"
    run.mkdir(parents=True, exist_ok=True)
    (run / "scaling.json").write_text(json.dumps({"format": "nasforge-scaling/1", "points": {}}))
    (run / "config.yaml").write_text(cfg.read_text().replace("epochs: 1", "epochs: 2"))
    res = CliRunner().invoke(app, ["scale", str(cfg), "--resume", "--quiet"])
    assert res.exit_code == 2 and "differs from the one this run started with" in res.output


def test_placement_picks_the_closest_latency_and_never_repeats_a_multiplier() -> None:
    from nasforge.experiment.scaling import place

    ladder = [(4.0, 3.0), (1.5, 1.2), (2.0, 1.9), (3.0, 2.5)]
    assert place(ladder, [1.3, 2.4]) == [1.5, 3.0]
    # two family points measured alike still get two baseline points, in order
    assert place(ladder, [1.9, 1.9, 1.95]) == [2.0, 3.0, 4.0]
    assert place(ladder, [9.0, 9.0]) == [4.0, 4.0]  # nothing larger left
