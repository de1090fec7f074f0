"""`nasforge latency build | predict | validate`, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nasforge.hardware.cli import app

runner = CliRunner()
TINY = [
    "--space",
    "nb201",
    "--input-shape",
    "3,8,8",
    "--option",
    "C=4",
    "--option",
    "N=1",
    "--calibration",
    "3",
    "--held-out",
    "2",
    "--quiet",
]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "t.json"
    res = runner.invoke(app, ["build", "--out", str(path), *TINY])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the console wraps long lines (tmp paths) anywhere
    assert "28 layers of nb201 on torch" in text
    assert "held-out accuracy on 2 models" in text
    assert re.search(r"verdict: (trust|do not trust|cannot tell)", text), text
    return path


def test_predict_archs_from_every_source(table: Path, tmp_path: Path) -> None:
    archs = tmp_path / "archs.txt"
    archs.write_text(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|\n"
        + json.dumps({f"edge_{d}_{s}": "avg_pool_3x3" for d in (1, 2, 3) for s in range(d)})
        + "\n"
    )
    res = runner.invoke(
        app,
        [
            "predict",
            str(table),
            "--archs",
            str(archs),
            "--sample",
            "3",
            "--arch",
            "|skip_connect~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.count(" ms  ") == 6
    assert "archs/s" in res.output


def test_validate_prints_scores_and_writes_plot_and_json(table: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "validate",
            str(table),
            "--n",
            "4",
            "--plot",
            str(tmp_path / "v.png"),
            "--json",
            str(tmp_path / "v.json"),
            "--no-record",
        ],
    )
    assert res.exit_code == 0, res.output
    for needle in (
        "table:sum",
        "table:sum+drift",
        "as slow as at build time",
        "flops",
        "params",
        "Kendall tau",
        "within +-10%",
    ):
        assert needle in res.output
    assert (tmp_path / "v.png").stat().st_size > 1000
    report = json.loads((tmp_path / "v.json").read_text())
    assert len(report["archs"]) == 4 and set(report["measured"]) == {"median", "p10", "min"}
    assert report["verdict"]["status"] in ("trust", "do not trust", "cannot tell")
    assert isinstance(report["stability"]["stable"], bool) and report["host"]
    assert "validation" not in json.loads(table.read_text())  # --no-record


def test_validate_gives_a_verdict_beside_the_host_and_records_it(
    table: Path, tmp_path: Path
) -> None:
    """The verdict is one of three; a validation on a quiet host is recorded in the table for
    later searches, one on a busy host says "cannot tell: host busy" and records nothing."""
    copy = tmp_path / "t.json"
    copy.write_text(table.read_text())
    res = runner.invoke(app, ["validate", str(copy), "--n", "3"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    cpu = json.loads(copy.read_text())["fingerprint"]["cpu_model"]
    assert f"host: {cpu}" in text and "flags" in text and "noise: " in text
    verdict = re.search(r"verdict: (trust|do not trust|cannot tell)", text)
    assert verdict is not None, text
    recorded = json.loads(copy.read_text()).get("validation")
    if "noise: unstable: host busy" in text:
        assert "cannot tell: host busy" in text and "verdict not recorded" in text
        assert recorded is None
    else:
        assert "verdict recorded in" in text
        assert recorded["stable"] is True and recorded["verdict"]["status"] == verdict.group(1)
        # 3 archs are too few to judge by
        assert recorded["verdict"]["status"] == "cannot tell" and "only 3 archs" in text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["build", "--out", "x.json", "--input-shape", "abc"], "--input-shape"),
        (["build", "--out", "x.json", "--backend", "tpu"], "unknown backend 'tpu'"),
        (["build", "--out", "x.json", "--space", "mobilenet"], "unknown space 'mobilenet'"),
        (["build", "--out", "x.json", "--option", "C"], "--option"),
        (["build", "--out", "x.json", "--statistic", "mean"], "statistic"),
        (["predict", "no-such-table.json", "--sample", "2"], "latency table not found"),
        (["validate", "no-such-table.json"], "latency table not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    res = runner.invoke(app, [a.replace("x.json", str(tmp_path / "x.json")) for a in args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_bad_arch_names_the_source(table: Path) -> None:
    bad = "|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    res = runner.invoke(app, ["predict", str(table), "--arch", bad])
    assert res.exit_code == 2 and "unknown op 'conv_9x9'" in res.output
    res = runner.invoke(app, ["predict", str(table), "--arch", "{bad json"])
    assert res.exit_code == 2 and "--arch #1: not valid JSON" in res.output
    res = runner.invoke(app, ["predict", str(table)])
    assert res.exit_code == 2 and "--sample" in res.output


def test_predict_with_a_layer_missing_from_the_table_says_how_to_extend_it(
    table: Path, tmp_path: Path
) -> None:
    d = json.loads(table.read_text())
    key = "nb201.op(nor_conv_3x3,8,8,1)@8x4x4"
    del d["entries"][key]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(d))
    arch = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|"
    res = runner.invoke(app, ["predict", str(partial), "--arch", arch])
    assert res.exit_code == 2, res.output
    assert key in res.output and "nasforge latency build" in res.output
    assert json.loads(partial.read_text()) == d  # predict wrote nothing


def test_plugin_option_makes_a_user_space_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--plugin` imports a user module first, so its space resolves (the build then stops at
    the bad backend, before measuring anything); without it the space is unknown."""
    plugin = tmp_path / "tiny_space_plugin.py"
    plugin.write_text(
        "from nasforge.space import Categorical, SearchSpace\n"
        "from nasforge.spaces import register_space\n\n"
        "class Tiny(SearchSpace):\n"
        "    name = 'tiny_cli_space'\n"
        "    def __init__(self, input_shape=(1, 8, 8), num_classes=2):\n"
        "        super().__init__([Categorical('w', (4, 8))])\n\n"
        "register_space('tiny_cli_space', Tiny, 'a test space')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [
        "build",
        "--out",
        str(tmp_path / "t.json"),
        "--space",
        "tiny_cli_space",
        "--backend",
        "no-such-backend",
        "--quiet",
    ]
    without = runner.invoke(app, args)
    assert without.exit_code == 2
    assert "tiny_cli_space" in without.output and "backend" not in without.output.lower()
    with_plugin = runner.invoke(app, [*args, "--plugin", "tiny_space_plugin"])
    assert with_plugin.exit_code == 2
    assert "no-such-backend" in with_plugin.output
    assert not (tmp_path / "t.json").exists()
    broken = runner.invoke(app, [*args, "--plugin", "no_such_plugin_module"])
    assert broken.exit_code == 2 and "no_such_plugin_module" in broken.output
