"""Data-parallel Once-for-All training (torch DDP, gloo on CPU) with 2 real processes.

Two processes run the real training command path (:class:`OFATraining`): rank 0 owns the run,
rank 1 follows it. After training both ranks hold the same weights and optimizer state, and
those weights equal a single-process replay of the DDP step (each global batch split in two,
each half's passes accumulated, the halves' gradients averaged) — the differential check of
the gradient averaging, the ``no_sync`` accumulation over the step's subnets and the shared
subnet sampling. ``torchrun -m nasforge ofa train`` end to end and ``kill -9`` + ``--resume``
under torchrun are ``slow`` (torchrun's start-up is most of their time)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from runproc import descendants, kill_group, wait_for
from torch import multiprocessing as mp
from torch import nn

from nasforge.errors import ConfigError
from nasforge.experiment.config import load_config
from nasforge.experiment.ofa_run import OFA_META, OFATraining, final_path, load_final_weights
from nasforge.experiment.oneshot_run import checkpoints
from nasforge.experiment.setup import make_dataset, make_space
from nasforge.experiment.store import TrialStore
from nasforge.oneshot.distributed import DistContext
from nasforge.oneshot.ofa.train import OFATrainer
from nasforge.spaces.mobile import MobileSpace

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this torch build",
)

WORLD = 2
SPACE = {
    "name": "mobile",
    "options": {
        "stages": [[8, 1, 2], [12, 2, 2]],
        "kernels": [3, 5],
        "expands": [2, 3],
        "widths": [0.5, 1.0],
        "se": [False],
        "activations": ["relu"],
        "stem_channels": 8,
        "head_features": 16,
    },
}
#: the full net, then every dimension elastic: the expand phase reorganizes the channels
PHASES = [
    {"name": "full", "epochs": 1},
    {"name": "expand", "elastic": ["kernel", "depth", "expand", "width"], "epochs": 1},
]


def write_config(
    tmp_path: Path, name: str, phases: list[dict[str, Any]] | None = None, samples: int = 400
) -> Path:
    raw = {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"name": "mnist1d", "samples": samples},  # 400: 256 to train, 2 steps of 128
        "space": SPACE,
        "ofa": {"train": {"batch_size": 128, "subnets_per_step": 2, "phases": phases or PHASES}},
        "latency": {"threads": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, port: int, config: str, out: str) -> None:
    """One rank of the job (a spawned process): torchrun's environment, then the command's
    own code path; saves what the test compares."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    training = OFATraining(load_config(config), progress=False)
    summary = training.run()
    trainer = training.trainer
    assert trainer is not None and trainer.optimizer is not None
    torch.save(
        {
            "params": {k: p.detach().clone() for k, p in trainer.supernet.named_parameters()},
            "optimizer": trainer.optimizer.state_dict(),
            "epoch": trainer.epoch,
            "summary": None if summary is None else summary.line(),
        },
        Path(out) / f"rank{rank}.pt",
    )


def spawn_ranks(config: Path, out: Path, timeout_s: float = 300.0) -> list[dict[str, Any]]:
    ctx = mp.spawn(_rank_main, args=(free_port(), str(config), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise AssertionError(f"the {WORLD} ranks did not finish in {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def replay_epoch(t: OFATrainer, world: int) -> None:
    """One epoch of ``t`` in one process as DDP computes it on ``world`` ranks (the oracle):
    per global batch, every rank's slice runs the step's passes (the same subnets), the
    slices' accumulated gradients are averaged; parameters no pass used keep no gradient."""
    cfg, d = t.config, t.dataset
    index = t.phase_index(t.epoch)
    if index != t._opt_phase:
        if t.adds_expand(index):
            t.supernet.reorganize_channels()
        t._build_optimizer(index)
    assert t.optimizer is not None and t.scheduler is not None
    phase = cfg.phases[index]
    rng = np.random.default_rng(t._seed(t.epoch))
    perm = torch.randperm(len(d.y_train), generator=torch.Generator().manual_seed(t._seed(t.epoch)))
    n_sub = (cfg.subnets_per_step + cfg.sandwich) if phase.elastic else 0
    limit = {str(k): n for k, n in phase.choices.items()}
    net, temp = t.supernet, cfg.temperature
    net.train()
    for step in range(t.steps_per_epoch):
        batch = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        subnets = [
            t.sample_arch(rng, phase.elastic, limit, smallest=cfg.sandwich and k == 0)
            for k in range(n_sub)
        ]
        total: dict[str, torch.Tensor] = {}
        for part in torch.tensor_split(batch, world):
            x, y = d.x_train[part], d.y_train[part]
            net.zero_grad(set_to_none=True)
            logits = net(x, t.largest)
            t.loss_fn(logits, y).backward()
            teacher = F.softmax(logits.detach() / temp, dim=1)
            for arch in subnets:
                out = net(x, arch)
                kd = F.kl_div(F.log_softmax(out / temp, dim=1), teacher, reduction="batchmean")
                (t.loss_fn(out, y) + cfg.distill * kd * temp * temp).backward()
            for name, p in net.named_parameters():
                if p.grad is not None:
                    total[name] = total.get(name, torch.zeros_like(p)) + p.grad / world
        for name, p in net.named_parameters():
            p.grad = total.get(name)
        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        t.optimizer.step()
        t.scheduler.step()
    t.epoch += 1


def test_two_ranks_train_in_lock_step_like_the_ddp_replay(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ddp")
    ranks = spawn_ranks(config, tmp_path)
    run = tmp_path / "runs" / "ddp"
    # rank 0 owns the run and reports; rank 1 followed and returned nothing
    assert ranks[0]["summary"] is not None and "on 2 processes (DDP)" in ranks[0]["summary"]
    assert ranks[1]["summary"] is None
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == 2
    # the same weights and optimizer state on both ranks (their data slices differ)
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), name
    for a, b in zip(
        ranks[0]["optimizer"]["state"].values(), ranks[1]["optimizer"]["state"].values()
    ):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    # the run: records and meta say the training was data-parallel
    with TrialStore(run / "trials.db", create=False) as store:
        records = store.epochs("ofa")
        meta = store.get_meta(OFA_META)
        assert store.get_meta("status") == "done"
    assert [(r["epoch"], r["stage"], r["world_size"]) for r in records] == [
        (1, "full", 2),
        (2, "expand", 2),
    ]
    assert records[1]["subnets"] == 2 * 3  # 2 steps x (sandwich + 2 random), as one process
    assert meta["world_size"] == 2 and meta["done"] is True
    assert [e for e, _ in checkpoints(run)] == [1, 2]
    final = load_final_weights(run)
    for name, p in ranks[0]["params"].items():
        assert torch.equal(final[name], p), name
    # differential: one process replaying DDP's arithmetic ends with the same weights
    cfg = load_config(config)
    dataset = make_dataset(cfg)
    space = make_space(cfg, dataset)
    assert isinstance(space, MobileSpace) and cfg.ofa is not None
    torch.set_num_threads(1)
    oracle = OFATrainer(space, dataset, cfg.ofa.train_config(cfg.seed))
    replay_epoch(oracle, WORLD)
    replay_epoch(oracle, WORLD)
    moved = 0
    init = OFATrainer(space, dataset, cfg.ofa.train_config(cfg.seed)).supernet
    initial = dict(init.named_parameters())
    for name, p in oracle.supernet.named_parameters():
        got = ranks[0]["params"][name]
        assert torch.allclose(got, p.detach(), rtol=1e-4, atol=1e-6), name
        moved += int(not torch.equal(got, initial[name].detach()))
    assert moved > len(initial) // 2  # the comparison is not of untrained weights


def test_a_batch_too_small_for_the_ranks_is_refused(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "small"))
    dataset = make_dataset(cfg)
    space = make_space(cfg, dataset)
    assert isinstance(space, MobileSpace) and cfg.ofa is not None
    train = cfg.ofa.train_config(cfg.seed).model_copy(update={"batch_size": 3})
    OFATrainer(space, dataset, train)  # alone: 3 samples a step are enough
    with pytest.raises(ConfigError, match="ofa.train.batch_size: 3 is too small for 2 data-"):
        OFATrainer(space, dataset, train, DistContext(rank=1, world_size=2))


def torchrun(config: Path, *args: str) -> subprocess.Popen[str]:
    """``torchrun --standalone --nproc-per-node 2 -m nasforge ofa train CONFIG --quiet ARGS``
    in its own session (so ``kill -9`` of the group takes the agent and both ranks)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={WORLD}",
            "-m",
            "nasforge",
            "ofa",
            "train",
            str(config),
            "--quiet",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 600.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        kill_job(proc)
    return proc.returncode, out, err


@pytest.mark.slow  # torchrun's agent and two ranks start up (about 35 s on a busy 2-core host)
def test_torchrun_ofa_train_end_to_end(tmp_path: Path) -> None:
    config = write_config(tmp_path, "tr")
    code, out, err = finish(torchrun(config))
    assert code == 0, err
    run = tmp_path / "runs" / "tr"
    # only rank 0 speaks: one summary line, one run directory line, no traceback
    summaries = [line for line in out.splitlines() if line.startswith("ofa: supernet trained")]
    assert len(summaries) == 1 and "on 2 processes (DDP)" in summaries[0], out
    assert err.count("run directory:") == 1 and "Traceback" not in err, err
    assert "data-parallel on 2 processes (DDP, gloo)" in " ".join(err.split())
    with TrialStore(run / "trials.db", create=False) as store:
        records = store.epochs("ofa")
        assert store.get_meta(OFA_META)["world_size"] == 2
    assert [(r["epoch"], r["world_size"]) for r in records] == [(1, 2), (2, 2)]
    assert final_path(run).is_file()


def kill_job(proc: subprocess.Popen[str]) -> None:
    """SIGKILL torchrun's agent and its ranks (each rank runs in a session of its own)."""
    for pid in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    kill_group(proc)


def rank_pid(proc: subprocess.Popen[str], rank: int) -> int:
    """The pid of ``rank`` among the agent's children (from their torchrun environment)."""
    for pid in descendants(proc.pid):
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if (
                f"RANK={rank}".encode() in env
                and b"nasforge" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ):
                return pid
    raise AssertionError(f"no rank {rank} under {proc.pid}")


@pytest.mark.slow  # four torchrun jobs of 12 small epochs (a few minutes on a busy host)
def test_lost_rank_and_kill_9_then_resume_under_torchrun(tmp_path: Path) -> None:
    phases = [
        {"name": "full", "epochs": 4},
        {"name": "kernel", "elastic": ["kernel"], "epochs": 4},
        {"name": "expand", "elastic": ["kernel", "depth", "expand", "width"], "epochs": 4},
    ]
    config = write_config(tmp_path, "k", phases, samples=1200)
    run = tmp_path / "runs" / "k"
    db = run / "trials.db"
    # 1. rank 1 is killed (its host lost): rank 0 records the run interrupted, with the resume
    proc = torchrun(config)
    try:
        wait_for(lambda: len(checkpoints(run)) >= 2, what="two OFA checkpoints")
        os.kill(rank_pid(proc, 1), signal.SIGKILL)
        code, _, err = finish(proc, 120)
    finally:
        kill_job(proc)
    assert code != 0 and "continue with: nasforge ofa train" in " ".join(err.split()), err
    with TrialStore(db, create=False) as store:
        assert store.get_meta("status") == "interrupted"
    first = checkpoints(run)[-1][0]
    assert 2 <= first < 12 and not final_path(run).exists(), "finished before it was killed"
    # 2. the resumed job is killed whole (kill -9 of the agent and both ranks)
    proc = torchrun(config, "--resume")
    try:
        wait_for(lambda: checkpoints(run)[-1][0] > first, what="a checkpoint after the resume")
        kill_job(proc)
    finally:
        kill_job(proc)
    last = checkpoints(run)[-1][0]
    assert first < last < 12 and not final_path(run).exists(), "finished before it was killed"
    # 3. resumed again: it completes from the last checkpoint
    code, _, err = finish(torchrun(config, "--resume"))
    assert code == 0, err
    log = (run / "progress.log").read_text()
    assert f"ofa: resumed from {run / 'supernet' / f'epoch_{first:04d}.pt'}" in log
    assert f"ofa: resumed from {run / 'supernet' / f'epoch_{last:04d}.pt'}" in log
    with TrialStore(db, create=False) as store:
        records = store.epochs("ofa")
        assert store.get_meta("status") == "done"
    assert [(r["epoch"], r["world_size"]) for r in records] == [(e, 2) for e in range(1, 13)]
    # and ends where an uninterrupted 2-process job does
    whole = write_config(tmp_path, "whole", phases, samples=1200)
    code, _, err = finish(torchrun(whole))
    assert code == 0, err
    reference = load_final_weights(tmp_path / "runs" / "whole")
    resumed = load_final_weights(run)
    assert reference.keys() == resumed.keys()
    for key, value in reference.items():
        assert torch.allclose(resumed[key].float(), value.float(), rtol=1e-5, atol=1e-7), key
