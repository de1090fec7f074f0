"""Data-parallel supernet training (DDP, gloo) for DARTS and SPOS under real ``torchrun``.

Two processes on this machine: the trainers on their own (the ranks hold identical weights
and alphas after training; a SPOS epoch equals a single process that averages the gradients
of the two halves of each batch, which fails if a rank trains on the whole batch or the
gradients are not averaged); ``torchrun -m nasforge search`` for DARTS and SPOS runs (epoch
records and the oneshot meta say ``world_size`` 2, rank 0 owns the run and the trial loop);
``kill -9`` of every process then ``--resume`` under torchrun continues from the last
checkpoint. Configs torchrun cannot share are refused on every rank with a one-line error.
Tiny sizes (nb201 C=4 N=1 on digits); no timing or accuracy is asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from runproc import kill_group, wait_for
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.data import Dataset, load_dataset
from nasforge.experiment.oneshot_run import checkpoints
from nasforge.experiment.store import TrialStore
from nasforge.oneshot.bilevel import batch_order
from nasforge.oneshot.darts import DartsConfig, DartsSearch
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
from nasforge.spaces.nb201 import NB201Space

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
DARTS_SMALL: dict[str, Any] = {
    "epochs": 2,
    "steps_per_epoch": 2,
    "batch_size": 32,
    "channels": 4,
    "hessian_iters": 2,
    "eval_batches": 1,
    "alpha_lr": 0.05,
}
SPOS_CFG: dict[str, Any] = {"epochs": 1, "batch_size": 32, "bn_batches": 1}

# run by torchrun in each of two processes: train both trainers, save what each rank holds
TRAINERS_SCRIPT = textwrap.dedent(
    """
    import sys
    from dataclasses import asdict

    import torch

    from nasforge.data import Dataset, load_dataset
    from nasforge.oneshot import distributed
    from nasforge.oneshot.darts import DartsConfig, DartsSearch
    from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
    from nasforge.spaces.nb201 import NB201Space

    ctx = distributed.init()
    d = load_dataset("digits")
    data = Dataset(d.name, d.x_train[:96], d.y_train[:96], d.x_val[:64], d.y_val[:64],
                   d.x_test[:8], d.y_test[:8], d.classes)
    space = NB201Space((1, 8, 8), 10, C=4, N=1)
    spos = SupernetTrainer(space, data, SupernetConfig(**{spos}))
    spos_rec = spos.step_epoch()
    darts = DartsSearch.from_dataset(space, DartsConfig(**{darts}), data)
    alpha0 = {{c: a.detach().clone() for c, a in darts.alpha.items()}}
    darts_rec = darts.step_epoch()
    torch.save(
        {{
            "world_size": ctx.world_size,
            "spos": {{k: v for k, v in spos.supernet.named_parameters()}},
            "spos_rec": asdict(spos_rec),
            "darts": {{k: v for k, v in darts.net.named_parameters()}},
            "alpha0": alpha0,
            "alpha": {{c: a.detach() for c, a in darts.alpha.items()}},
            "darts_rec": {{k: darts_rec[k] for k in ("world_size", "train_loss", "cpu_seconds")}},
        }},
        f"{{sys.argv[1]}}/rank{{ctx.rank}}.pt",
    )
    distributed.shutdown()
    """
)


def tiny_digits() -> Dataset:
    d = load_dataset("digits")
    return Dataset(
        d.name,
        d.x_train[:96],
        d.y_train[:96],
        d.x_val[:64],
        d.y_val[:64],
        d.x_test[:8],
        d.y_test[:8],
        d.classes,
    )


def torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(
        [*TORCHRUN, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def spos_reference(data: Dataset, config: SupernetConfig) -> dict[str, torch.Tensor]:
    """One SPOS epoch in one process, each step's gradient the mean of the gradients of the
    two contiguous halves of the global batch (what two DDP ranks compute together)."""
    ref = SupernetTrainer(NB201Space((1, 8, 8), 10, C=4, N=1), data, config)
    net, sampler = ref.supernet, ref.sampler_for(0)
    perm = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))
    net.train()
    for step in range(ref.steps_per_epoch):
        idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
        ref.optimizer.zero_grad(set_to_none=True)
        for arch in sampler.paths():
            for half in torch.tensor_split(idx, 2):
                (ref.loss_fn(net(data.x_train[half], arch), data.y_train[half]) / 2).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        ref.optimizer.step()
        ref.scheduler.step()
    return dict(net.named_parameters())


def darts_reference(data: Dataset, config: DartsConfig) -> DartsSearch:
    """One DARTS epoch (first order) in one process, alpha's and the weights' gradients the
    means over the two halves of each global batch (what two DDP ranks compute together)."""
    s = DartsSearch.from_dataset(NB201Space((1, 8, 8), 10, C=4, N=1), config, data)
    for group in s.w_opt.param_groups:
        group["lr"] = s.lr()
    bs, (xt, yt), (xv, yv) = config.batch_size, s.train, s.val
    tr = batch_order(len(yt), s.steps() * bs, s.generator)
    va = batch_order(len(yv), s.steps() * bs, s.generator)
    for step in range(s.steps()):
        ti, vi = tr[step * bs : (step + 1) * bs], va[step * bs : (step + 1) * bs]
        seed = int(torch.randint(0, 2**62, (1,), generator=s.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            s.a_opt.zero_grad(set_to_none=True)
            w = s.weights()
            halves = torch.tensor_split(vi, 2)
            val = torch.stack([F.cross_entropy(s.net(xv[h], w), yv[h]) / 2 for h in halves]).sum()
            (val + s.arch_penalty(w)).backward()
            s.a_opt.step()
            s.w_opt.zero_grad(set_to_none=True)
            wn = s.weights(for_network=True)
            halves = torch.tensor_split(ti, 2)
            torch.stack(
                [F.cross_entropy(s.net(xt[h], wn), yt[h]) / 2 for h in halves]
            ).sum().backward()
            torch.nn.utils.clip_grad_norm_(s.net.parameters(), config.grad_clip)
            s.w_opt.step()
    return s


def test_two_ranks_train_the_same_weights_as_averaged_halves(tmp_path: Path) -> None:
    script = tmp_path / "trainers.py"
    script.write_text(TRAINERS_SCRIPT.format(spos=SPOS_CFG, darts=DARTS_SMALL))
    res = torchrun(str(script), str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == 2
    for name in ("spos", "darts", "alpha"):  # DDP weights and all-reduced alphas: one state
        assert r0[name].keys() == r1[name].keys()
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), f"{name}/{k} differs between ranks"
    assert any(not torch.equal(r0["alpha"][c], r0["alpha0"][c]) for c in r0["alpha"])
    assert r0["spos_rec"]["world_size"] == 2 and r0["darts_rec"]["world_size"] == 2
    assert r0["spos_rec"]["cpu_seconds"] > 0 and r0["darts_rec"]["cpu_seconds"] > 0
    # the data-parallel epoch is the single-process epoch of averaged half-batch gradients
    reference = spos_reference(tiny_digits(), SupernetConfig(**SPOS_CFG))
    for k, v in reference.items():
        assert torch.allclose(r0["spos"][k], v.detach(), rtol=1e-4, atol=1e-6), k
    fresh = SupernetTrainer(NB201Space((1, 8, 8), 10, C=4, N=1), tiny_digits(), SupernetConfig())
    init = dict(fresh.supernet.named_parameters())
    assert any(not torch.allclose(v.detach(), init[k]) for k, v in reference.items())
    ref = darts_reference(tiny_digits(), DartsConfig(**DARTS_SMALL))
    for k, v in ref.net.named_parameters():
        assert torch.allclose(r0["darts"][k], v.detach(), rtol=1e-4, atol=1e-6), k
    for c, a in ref.alpha.items():
        assert torch.allclose(r0["alpha"][c], a.detach(), rtol=1e-4, atol=1e-6), c


# -- configs torchrun cannot share: refused on every rank before any process waits ------------
def write(tmp_path: Path, name: str, oneshot: dict[str, Any] | None, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"name": "digits"},
        "space": {"name": "nb201", "options": {"C": 4, "N": 1}},
        "search": {"trials": 3, "executor": "inline"},
        "strategy": {"name": "random"},
        "train": {"batch_size": 32, "lr": 0.05, "epochs": 1},
        "objective": {"kind": "accuracy"},
        "latency": {"mode": "flops", "repeats": 3, "warmup": 1},
        "final": {"epochs": 1},
    }
    if oneshot is not None:
        cfg["oneshot"] = oneshot
    cfg.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("oneshot", "field"),
    [
        ({"method": "darts", "options": {**DARTS_SMALL, "order": 2}}, "oneshot.options.order: 2"),
        (None, "oneshot: 2 processes (torchrun)"),
    ],
)
def test_torchrun_refuses_what_it_cannot_share_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oneshot: dict[str, Any] | None, field: str
) -> None:
    path = write(tmp_path, "bad", oneshot)
    for rank in ("0", "1"):  # what every rank of `torchrun --nproc-per-node 2` sees
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        res = CliRunner().invoke(app, ["search", str(path), "--quiet", "--no-final"])
        assert res.exit_code == 2, res.output
        assert f"error: {field}" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs" / "bad" / "trials.db").exists()


# -- `torchrun -m nasforge search` -----------------------------------------------------------------
def epochs_of(run: Path, phase: str) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    with TrialStore(run / "trials.db", create=False) as store:
        return store.epochs(phase), store.get_meta("oneshot"), store.count(("complete",))


@pytest.mark.slow
def test_darts_search_under_torchrun_records_world_size_2(tmp_path: Path) -> None:
    path = write(tmp_path, "d", {"method": "darts", "options": DARTS_SMALL})
    res = torchrun("-m", "nasforge", "search", str(path), "--quiet", "--no-final")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trials: 1 complete") == 1  # rank 0 alone reports the run
    run = tmp_path / "runs" / "d"
    records, meta, complete = epochs_of(run, "darts")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["world_size"] == 2 and r["cpu_seconds"] > 0 for r in records)
    assert meta["world_size"] == 2 and complete == 1
    assert [e for e, _ in checkpoints(run)] == [1, 2]
    log = (run / "progress.log").read_text()
    assert "data-parallel on 2 processes" in log and "darts: derived" in log
    # --resume of a finished phase: rank 0 announces nothing to train, every rank exits 0
    res = torchrun("-m", "nasforge", "search", str(path), "--quiet", "--no-final", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    again, _, complete = epochs_of(run, "darts")
    assert again == records and complete == 1


@pytest.mark.slow
def test_spos_search_under_torchrun_trains_together_then_rank_0_runs_the_trials(
    tmp_path: Path,
) -> None:
    oneshot = {"method": "spos", "options": {"sampling": "fair", "epochs": 2, "bn_batches": 1}}
    path = write(tmp_path, "s", oneshot)
    res = torchrun("-m", "nasforge", "search", str(path), "--quiet", "--no-final")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "s"
    records, meta, complete = epochs_of(run, "supernet")
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 and r["sampling"] == "fair" for r in records)
    assert meta["world_size"] == 2 and complete == 3
    assert (run / meta["checkpoint"]).is_file()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun's workers run in their own sessions)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_kill_9_of_every_rank_then_resume_under_torchrun_continues(tmp_path: Path) -> None:
    epochs = 30
    path = write(tmp_path, "k", {"method": "darts", "options": {**DARTS_SMALL, "epochs": epochs}})
    run = tmp_path / "runs" / "k"
    cmd = [*TORCHRUN, "-m", "nasforge", "search", str(path), "--quiet", "--no-final"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: len(checkpoints(run)) >= 2, what="two DARTS checkpoints")
        for pid in children(proc.pid):  # a lost machine: every rank dies at once
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    last = checkpoints(run)[-1][0]
    assert 2 <= last < epochs, "the run finished before it could be killed"
    res = torchrun("-m", "nasforge", "search", str(path), "--quiet", "--no-final", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    log = (run / "progress.log").read_text()
    assert f"darts: resumed from {run / 'supernet' / f'epoch_{last:04d}.pt'}" in log
    records, meta, complete = epochs_of(run, "darts")
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert all(r["world_size"] == 2 for r in records) and meta["world_size"] == 2
    assert [e for e, _ in checkpoints(run)] == list(range(1, epochs + 1))
    assert complete == 1
    # the same data-parallel search uninterrupted: the same records (every rank resumed
    # from rank 0's state: weights, alphas, optimizers and the batch order's generator)
    whole = write(tmp_path, "w", {"method": "darts", "options": {**DARTS_SMALL, "epochs": epochs}})
    res = torchrun("-m", "nasforge", "search", str(whole), "--quiet", "--no-final")
    assert res.returncode == 0, res.stderr[-3000:]
    reference, _, _ = epochs_of(tmp_path / "runs" / "w", "darts")
    for a, b in zip(records, reference, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5), a["epoch"]
        assert a["arch"] == b["arch"], a["epoch"]


def rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (from its environment), if it runs."""
    for pid in children(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_a_lost_rank_stops_rank_0_in_one_line_then_resume_continues(tmp_path: Path) -> None:
    epochs = 30
    path = write(tmp_path, "l", {"method": "darts", "options": {**DARTS_SMALL, "epochs": epochs}})
    run, logs = tmp_path / "runs" / "l", tmp_path / "logs"
    cmd = [*TORCHRUN, "--log-dir", str(logs), "--redirects", "3", "-m", "nasforge", "search"]
    proc = subprocess.Popen(
        [*cmd, str(path), "--quiet", "--no-final"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(checkpoints(run)) >= 1, what="a DARTS checkpoint")
        lost = rank_pid(proc.pid, 1)
        assert lost is not None, "rank 1 is not running"
        os.kill(lost, signal.SIGKILL)  # rank 1's machine is lost
        assert proc.wait(300) != 0
    finally:
        kill_group(proc)
    (stderr0,) = [p for p in logs.rglob("stderr.log") if p.parent.name == "0"]
    said = stderr0.read_text()
    assert "Traceback" not in said, said[-3000:]
    assert "continue with: torchrun --nproc-per-node 2 -m nasforge search" in said, said[-3000:]
    done = checkpoints(run)[-1][0]
    assert done < epochs, "the run finished before rank 1 was lost"
    res = torchrun("-m", "nasforge", "search", str(path), "--quiet", "--no-final", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    records, meta, complete = epochs_of(run, "darts")
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1)) and complete == 1
