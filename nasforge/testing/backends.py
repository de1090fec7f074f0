"""Conformance suite for latency backends (:class:`~nasforge.hardware.Backend`).

Like Optuna's ``optuna.testing`` suites, it ships inside the package so that every backend
(built in, or a plug-in's registered with :func:`~nasforge.hardware.register_backend`) keeps
the same contract with the timing harness. Subclass :class:`BackendConformance` in a test
module, name the subclass ``Test...`` and set :attr:`~BackendConformance.backend_name`::

    class TestMyBackend(BackendConformance):
        backend_name = "mybackend"

What is checked is the contract, never a speed: runners time ``n`` calls and return two
lists of ``n`` finite, non-negative milliseconds; the caller's model is not mutated; the
clock the backend chooses is consistent with :meth:`Backend.single_threaded`; fresh runners
from :meth:`Backend.runner_factory` work; the backend is reachable by name through
:class:`~nasforge.hardware.BackendSpec` and :func:`~nasforge.hardware.measure_latency`.
Methods use plain ``assert`` so that the module needs no pytest at import time; override
:meth:`~BackendConformance.available` to say why a backend cannot run on this machine (the
tests then return early).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nasforge.hardware.backend_base import Backend, BackendError, BackendSpec, Runner
from nasforge.hardware.timing import TimingConfig, measure_latency

SHAPE = (3, 8, 8)


def probe_model() -> nn.Sequential:
    """A small conv-BN-ReLU network in training mode (so that mutation would show)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).train()


class BackendConformance:
    """Subclass with ``backend_name`` set; every ``test_*`` method checks one rule."""

    backend_name: str = ""
    threads: int = 1

    def available(self) -> str | None:
        """Why this backend cannot run here (None when it can)."""
        return None

    def spec(self) -> BackendSpec:
        return BackendSpec.parse(self.backend_name, threads=self.threads)

    def _check_samples(self, runner: Runner, n: int) -> None:
        walls, cpus = runner.run(n)
        assert len(walls) == len(cpus) == n
        assert all(math.isfinite(w) and w >= 0 for w in walls)
        assert all(math.isnan(c) or c >= 0 for c in cpus)

    def test_the_name_resolves_to_a_backend(self) -> None:
        spec = self.spec()
        assert isinstance(spec.backend, Backend)
        assert spec.label == spec.backend.name
        assert BackendSpec.from_dict(spec.to_dict()) == spec
        for flag in ("is_gpu", "overlaps_branches", "chains_entries"):
            assert isinstance(getattr(spec.backend, flag), bool), flag

    def test_runner_times_n_calls_and_leaves_the_model_alone(self) -> None:
        if self.available() is not None:
            return
        spec, model = self.spec(), probe_model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        runner = spec.backend.make_runner(model, SHAPE, 2, spec, "probe")
        try:
            assert isinstance(runner, Runner)
            self._check_samples(runner, 3)
            self._check_samples(runner, 1)
        finally:
            runner.close()
        assert model.training, "make_runner must not switch the caller's model to eval"
        assert isinstance(model[1], nn.BatchNorm2d), "make_runner must not fold the caller's BN"
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_the_clock_follows_single_threaded(self) -> None:
        spec = self.spec()
        single = spec.backend.single_threaded(spec)
        assert isinstance(single, bool) and single == spec.single_threaded
        assert TimingConfig().resolve_clock(spec) == ("cpu" if single else "wall")
        assert TimingConfig(clock="wall").resolve_clock(spec) == "wall"
        try:
            cpu = TimingConfig(clock="cpu").resolve_clock(spec)
        except BackendError as exc:
            assert not single and "timing.clock" in str(exc)
        else:
            assert single and cpu == "cpu"

    def test_runner_factory_makes_fresh_working_runners(self) -> None:
        if self.available() is not None:
            return
        spec = self.spec()
        make = spec.backend.runner_factory(probe_model, SHAPE, 1, spec)
        for _ in range(2):
            runner = make()
            try:
                self._check_samples(runner, 2)
            finally:
                runner.close()

    def test_measure_latency_uses_it_by_name(self) -> None:
        if self.available() is not None:
            return
        spec = self.spec()
        m = measure_latency(
            probe_model(), SHAPE, warmup=1, repeats=3, rounds=3, backend=spec, clock="auto"
        )
        assert m.backend == spec.label and m.threads == spec.threads
        assert m.clock == TimingConfig().resolve_clock(spec)
        assert 0 <= m.min_ms <= m.median_ms and m.repeats >= 1
