"""The README section "Your own search space", run exactly as written.

Its fenced blocks are the example's files (a block whose first line is ``# <file name>: ...``)
and the commands (the ``bash`` block). The files are written to a temporary
``examples/own_space/`` and the commands run from the temporary root, through the installed
``nasforge`` command; the committed ``examples/own_space/`` must equal the README.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasforge.experiment.store import TrialStore
from nasforge.nn.layers import build_layer
from nasforge.space import LayerSpec, plan_layers

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Your own search space"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
FILE_LINE = re.compile(r"# ([\w.]+):")


def _section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else len(text)]


def _blocks() -> tuple[dict[str, str], list[str]]:
    """(file name -> content, the bash blocks) of the section."""
    files: dict[str, str] = {}
    commands: list[str] = []
    for lang, body in FENCE.findall(_section()):
        m = FILE_LINE.match(body)
        if m:
            files[m.group(1)] = body
        elif lang == "bash":
            commands.append(body)
    return files, commands


def test_the_committed_example_is_the_readme() -> None:
    files, commands = _blocks()
    assert set(files) == {"channel_bench.py", "make_table.py", "latency.py", "channel_bench.yaml"}
    assert len(commands) == 1
    for name, body in files.items():
        assert (REPO / "examples" / "own_space" / name).read_text() == body, name


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Write the README's files and run its commands once; (example folder, stdout)."""
    root = tmp_path_factory.mktemp("readme")
    folder = root / "examples" / "own_space"
    folder.mkdir(parents=True)
    files, commands = _blocks()
    for name, body in files.items():
        (folder / name).write_text(body)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    res = subprocess.run(
        ["bash", "-e", "-c", commands[0]],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return folder, res.stdout


def test_the_table_is_made_deterministically(ran: tuple[Path, str]) -> None:
    folder, _ = ran
    made = (folder / "channel_bench.csv").read_text()
    assert made == (REPO / "examples" / "own_space" / "channel_bench.csv").read_text()
    assert len(made.splitlines()) == 1 + 2**7


def test_spaces_lists_the_plugin_space(ran: tuple[Path, str]) -> None:
    _, out = ran
    line = next(li for li in out.splitlines() if "channel_bench_macro" in li)
    assert "plugin channel_bench" in line


def test_the_search_used_both_tables_and_the_limit(ran: tuple[Path, str]) -> None:
    folder, _ = ran
    with (folder / "latency.csv").open() as fh:
        latency = {
            tuple(int(r[f"c{i}"]) for i in range(1, 8)): float(r["lat_ms_cpu"])
            for r in csv.DictReader(fh)
        }
    assert len(latency) == 2**7 and all(v > 0 for v in latency.values())
    run = folder / "runs" / "channel-bench"
    with TrialStore(run / "trials.db") as store:
        trials = store.trials(("complete",))
    assert len(trials) == 30
    for t in trials:  # the latency the search saw is the joined file's, per arch
        widths = tuple(int(t.arch[f"c{i}"]) for i in range(1, 8))
        assert t.metrics["latency_ms"] == pytest.approx(latency[widths], abs=1e-9)
    card = json.loads((run / "best" / "card.json").read_text())
    if min(latency.values()) <= 0.6:  # the limit is feasible on this machine
        assert card["latency_ms"] <= 0.6


def test_the_plan_is_the_model_that_build_makes(ran: tuple[Path, str]) -> None:
    """The latency plan describes build(): the same layers (parameters) and the same output."""
    folder, _ = ran
    module = sys.modules.get("channel_bench")  # one registration of its layers per process
    if module is None:
        spec = importlib.util.spec_from_file_location("channel_bench", folder / "channel_bench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["channel_bench"] = module
        spec.loader.exec_module(module)
    space = module.ChannelBenchSpace()
    rng = np.random.default_rng(0)
    for _ in range(5):
        arch = space.sample(rng)
        model = space.build(arch).eval()
        layers = [build_layer(s) for s in plan_layers(space.plan(arch))]
        n_model = sum(p.numel() for p in model.parameters())
        assert n_model == sum(p.numel() for m in layers for p in m.parameters())
        x = torch.randn(2, *space.input_shape)
        y = x
        for lay, spec_ in zip(layers, plan_layers(space.plan(arch))):
            assert isinstance(spec_, LayerSpec) and tuple(y.shape[1:]) == spec_.in_shape
            y = lay(y)
        assert y.shape == model(x).shape == (2, space.num_classes)
