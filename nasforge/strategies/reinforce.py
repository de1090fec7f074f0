"""Policy-gradient search: an LSTM controller emits the arch token by token.

Zoph & Le, "Neural Architecture Search with Reinforcement Learning" (REINFORCE with a
moving-average baseline), with ENAS's entropy bonus; ``algorithm="ppo"`` uses the clipped
surrogate objective of Schulman et al. over a few epochs of recent samples (as in Zoph et
al. 2018). Each dimension of the space is one step of the sequence; conditional dimensions
are decoded in order and inactive ones are skipped (the LSTM state is carried over them).

Rewards are the score's quantile among finished trials by default, so one learning rate
fits accuracy in percent, a 0..1 score or a constraint objective with large penalties.
Sampling draws from the strategy's numpy generator; the controller and optimizer state go
into :meth:`~Strategy.state_dict` as nested lists of floats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from nasforge.space import Arch, Categorical, Dimension, Float, Int, SearchSpace
from nasforge.space.arch import Value
from nasforge.strategies.base import Constraint, Score, Strategy, scalar, torch_single_thread

ALGORITHMS = ("reinforce", "ppo")
REWARDS = ("quantile", "raw")


@dataclass(frozen=True)
class ReinforceConfig:
    """Controller and learning settings (defaults suit spaces of up to ~100 dimensions).

    Attributes:
        hidden_size: LSTM hidden and embedding size.
        lr: Adam learning rate.
        entropy_weight: weight of the entropy bonus (keeps the policy exploring).
        baseline_decay: decay of the moving-average reward baseline.
        batch_size: tells per policy update.
        ppo_epochs: passes over the recent samples per PPO update.
        ppo_clip: PPO's clipping range epsilon.
        ppo_buffer: how many recent samples each PPO update uses.
        temperature: softmax temperature of the controller's logits.
        float_bins: how many bins a float dimension is discretised into.
        reward: ``"quantile"`` (score's rank among finished trials, in [0, 1]) or ``"raw"``.
    """

    hidden_size: int = 64
    lr: float = 0.02
    entropy_weight: float = 1e-2
    baseline_decay: float = 0.9
    batch_size: int = 5
    ppo_epochs: int = 4
    ppo_clip: float = 0.2
    ppo_buffer: int = 20
    temperature: float = 1.0
    float_bins: int = 10
    reward: str = "quantile"

    def __post_init__(self) -> None:
        positive = (
            "hidden_size",
            "lr",
            "batch_size",
            "ppo_epochs",
            "ppo_buffer",
            "temperature",
            "float_bins",
            "ppo_clip",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"reinforce.{name}: expected a positive number, got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(
                f"reinforce.baseline_decay: expected a value in [0, 1), got {self.baseline_decay!r}"
            )
        if self.entropy_weight < 0:
            raise ValueError(
                f"reinforce.entropy_weight: expected >= 0, got {self.entropy_weight!r}"
            )
        if self.reward not in REWARDS:
            raise ValueError(
                f"reinforce.reward: expected one of {', '.join(REWARDS)}, got {self.reward!r}"
            )


def dimension_choices(dim: Dimension, float_bins: int) -> list[Value]:
    """The token vocabulary of one dimension (float dimensions are binned at bin centres)."""
    if isinstance(dim, Categorical):
        return list(dim.choices)
    if isinstance(dim, Int):
        return list(range(dim.low, dim.high + 1, dim.step))
    if isinstance(dim, Float):
        return [dim._from_unit((i + 0.5) / float_bins) for i in range(float_bins)]
    raise ValueError(
        f"reinforce: dimension {dim.label!r} of type {type(dim).__name__} has no tokens"
    )


def _token(dim: Dimension, choices: list[Value], value: Value) -> int:
    if isinstance(dim, Float):
        u = dim._to_unit(float(value))
        return min(int(u * len(choices)), len(choices) - 1)
    for i, c in enumerate(choices):
        if c == value and (type(c) is type(value) or not isinstance(c, bool)):
            return i
    raise ValueError(f"reinforce: {dim.label} = {value!r} is not one of {choices!r}")


class _Controller(nn.Module):
    """LSTM over the dimension sequence; step t reads the embedding of the last emitted token."""

    def __init__(self, sizes: list[int], hidden: int) -> None:
        super().__init__()
        self.sizes = sizes
        self.offsets = [0, *np.cumsum(sizes)[:-1].tolist()]
        self.embed = nn.Embedding(sum(sizes) + 1, hidden)  # last row: the start token
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.start = sum(sizes)

    def initial(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed(torch.full((batch,), self.start, dtype=torch.long))
        h = torch.zeros(batch, self.cell.hidden_size)
        return x, h, h.clone()

    def step(
        self, t: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, c = self.cell(x, (h, c))
        return self.heads[t](h) / temperature, h, c

    def log_probs(
        self, tokens: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums of log-probabilities and entropies of token sequences ``(B, T)``; -1 = inactive."""
        batch = tokens.shape[0]
        x, h, c = self.initial(batch)
        logp = torch.zeros(batch)
        ent = torch.zeros(batch)
        for t in range(len(self.sizes)):
            active = tokens[:, t] >= 0
            logits, h_new, c_new = self.step(t, x, h, c, temperature)
            lsm = torch.log_softmax(logits, dim=-1)
            tok = tokens[:, t].clamp(min=0)
            chosen = lsm.gather(1, tok[:, None])[:, 0]
            logp = logp + torch.where(active, chosen, torch.zeros_like(chosen))
            step_ent = -(lsm.exp() * lsm).sum(-1)
            ent = ent + torch.where(active, step_ent, torch.zeros_like(step_ent))
            m = active[:, None]
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            x = torch.where(m, self.embed(tok + self.offsets[t]), x)
        return logp, ent


class ReinforceStrategy(Strategy):
    """LSTM controller trained by REINFORCE (or PPO) on the scores it is told.

    Args:
        space: the search space; every dimension becomes one decoding step.
        seed: seeds the controller's initial weights and the sampling stream.
        algorithm: ``"reinforce"`` (policy gradient with a moving-average baseline) or
            ``"ppo"`` (clipped objective, ``ppo_epochs`` passes over ``ppo_buffer`` samples).
        config: a :class:`ReinforceConfig`; keyword ``options`` override its fields.

    The policy is updated after every ``batch_size`` successful tells; failed trials
    (score ``None``) are skipped. Multi-objective scores use their first objective.
    """

    name = "reinforce"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        algorithm: str = "reinforce",
        config: ReinforceConfig | None = None,
        constraint: Constraint | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, seed, constraint)
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"reinforce.algorithm: expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}"
            )
        allowed = {f.name for f in fields(ReinforceConfig)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(
                f"reinforce: unknown option(s) {', '.join(unknown)}; expected "
                f"{', '.join(sorted(allowed))}"
            )
        self.algorithm = algorithm
        self.config = replace(config or ReinforceConfig(), **options)
        self.dims = space.dimensions()
        self.choices = [dimension_choices(d, self.config.float_bins) for d in self.dims]
        self._archs: dict[tuple[tuple[str, Value], ...], Arch] = {}
        self.controller = self._new_controller()
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.config.lr)
        self._reset_learning_state()

    def _new_controller(self) -> _Controller:
        # initialise from a private generator: the global torch RNG is left alone
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):  # module constructors draw default inits
            ctrl = _Controller([len(c) for c in self.choices], self.config.hidden_size)
        with torch.no_grad():
            for p in ctrl.parameters():
                p.copy_(torch.empty(p.shape).uniform_(-0.1, 0.1, generator=gen))
        return ctrl

    def _reset_learning_state(self) -> None:
        self.baseline: float | None = None
        self.rewards: list[float] = []  # raw scalar scores of finished trials, sorted
        self.batch: list[tuple[list[int], float]] = []  # (tokens, advantage) since last update
        self.recent: list[tuple[list[int], float]] = []  # PPO's buffer
        self.updates = 0

    # -- sampling -------------------------------------------------------------------------------
    def _propose(self) -> Arch:
        # Sample a batch in one pass and return the first unasked arch: a peaked policy
        # mostly repeats itself, and one batched pass costs about as much as one sample.
        sample = None
        for _ in range(self.PASSES):
            with torch_single_thread():
                batch = self.sample(self.SAMPLE_BATCH)
            for sample in batch:
                if self.allowed(sample):
                    return sample
        assert sample is not None
        for _ in range(self.WALK):  # the policy has collapsed: random-walk off its mode
            sample = self.space.mutate(sample, self.rng)
            if self.allowed(sample):
                break
        return sample

    SAMPLE_BATCH = 16
    PASSES = 2
    WALK = 20

    def sample(self, n: int) -> list[Arch]:
        """Draw ``n`` archs from the controller (consumes the strategy's random stream)."""
        ctrl, temp = self.controller, self.config.temperature
        values: list[dict[str, Value]] = [{} for _ in range(n)]
        with torch.no_grad():
            x, h, c = ctrl.initial(n)
            for t, dim in enumerate(self.dims):
                active = np.array([dim.active(v) for v in values])
                if not active.any():
                    continue
                logits, h_new, c_new = ctrl.step(t, x, h, c, temp)
                p = torch.softmax(logits.double(), -1).numpy()
                cum = np.cumsum(p, axis=1)
                u = self.rng.random(n) * cum[:, -1]
                tok = np.minimum((cum <= u[:, None]).sum(1), p.shape[1] - 1)
                for i in np.flatnonzero(active):
                    values[i][dim.label] = self.choices[t][int(tok[i])]
                m = torch.from_numpy(active)[:, None]
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c)
                x = torch.where(m, ctrl.embed(torch.from_numpy(tok + ctrl.offsets[t])), x)
        return [self._make(v) for v in values]

    def _make(self, values: dict[str, Value]) -> Arch:
        """``space.make``, memoised by values: a peaked policy repeats itself, and canonical
        keys can be costly to compute (cell isomorphism)."""
        memo = tuple(sorted(values.items()))
        arch = self._archs.get(memo)
        if arch is None:
            if len(self._archs) > 100_000:
                self._archs.clear()
            arch = self._archs[memo] = self.space.make(values)
        return arch

    def tokens(self, arch: Arch) -> list[int]:
        """The token sequence of ``arch`` (-1 for inactive dimensions)."""
        return [
            _token(d, ch, arch[d.label]) if d.label in arch else -1
            for d, ch in zip(self.dims, self.choices)
        ]

    # -- learning -------------------------------------------------------------------------------
    def _reward(self, s: float) -> float:
        if self.config.reward == "raw":
            return s
        r = self.rewards
        lo, hi = np.searchsorted(r, s, side="left"), np.searchsorted(r, s, side="right")
        return float((lo + hi) / 2) / max(len(r), 1)

    def _observe(self, arch: Arch, score: Score) -> None:
        if score is None:
            return
        s = scalar(score)
        if not np.isfinite(s):
            return
        self.rewards.insert(int(np.searchsorted(self.rewards, s)), s)
        reward = self._reward(s)
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        d = self.config.baseline_decay
        self.baseline = d * self.baseline + (1.0 - d) * reward
        sample = (self.tokens(arch), advantage)
        self.batch.append(sample)
        self.recent = [*self.recent, sample][-self.config.ppo_buffer :]
        if len(self.batch) >= self.config.batch_size:
            with torch_single_thread():
                self._update()
            self.batch = []

    def _update(self) -> None:
        cfg = self.config
        if self.algorithm == "reinforce":
            toks = torch.tensor([t for t, _ in self.batch])
            adv = torch.tensor([a for _, a in self.batch], dtype=torch.float32)
            logp, ent = self.controller.log_probs(toks, cfg.temperature)
            loss = -(adv * logp).mean() - cfg.entropy_weight * ent.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        else:
            toks = torch.tensor([t for t, _ in self.recent])
            adv = torch.tensor([a for _, a in self.recent], dtype=torch.float32)
            with torch.no_grad():
                old, _ = self.controller.log_probs(toks, cfg.temperature)
            for _ in range(cfg.ppo_epochs):
                logp, ent = self.controller.log_probs(toks, cfg.temperature)
                ratio = torch.exp(logp - old)
                clipped = torch.clamp(ratio, 1.0 - cfg.ppo_clip, 1.0 + cfg.ppo_clip)
                loss = (
                    -torch.min(ratio * adv, clipped * adv).mean() - cfg.entropy_weight * ent.mean()
                )
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        self.updates += 1

    def probabilities(self) -> dict[str, list[float]]:
        """Choice probabilities per dimension along the greedy (argmax) path, for inspection."""
        out: dict[str, list[float]] = {}
        values: dict[str, Value] = {}
        ctrl = self.controller
        with torch.no_grad():
            x, h, c = ctrl.initial(1)
            for t, dim in enumerate(self.dims):
                if not dim.active(values):
                    continue
                logits, h, c = ctrl.step(t, x, h, c, self.config.temperature)
                p = torch.softmax(logits[0], -1)
                out[dim.label] = [float(v) for v in p]
                tok = int(p.argmax())
                values[dim.label] = self.choices[t][tok]
                x = ctrl.embed(torch.tensor([tok + ctrl.offsets[t]]))
        return out

    # -- state ----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        opt = self.optimizer.state_dict()
        return {
            "algorithm": self.algorithm,
            "config": asdict(self.config),
            "controller": {k: v.tolist() for k, v in self.controller.state_dict().items()},
            "optimizer": {
                "state": {
                    str(i): {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in s.items()}
                    for i, s in opt["state"].items()
                },
                "param_groups": opt["param_groups"],
            },
            "baseline": self.baseline,
            "rewards": list(self.rewards),
            "batch": [[t, a] for t, a in self.batch],
            "recent": [[t, a] for t, a in self.recent],
            "updates": self.updates,
        }

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.controller.load_state_dict(
            {k: torch.tensor(v, dtype=torch.float32) for k, v in extra["controller"].items()}
        )
        opt = extra["optimizer"]
        state = {}
        for i, s in opt["state"].items():
            state[int(i)] = {k: torch.tensor(v, dtype=torch.float32) for k, v in s.items()}
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.config.lr)
        self.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
        self.baseline = extra["baseline"]
        self.rewards = [float(r) for r in extra["rewards"]]
        self.batch = [(list(t), float(a)) for t, a in extra["batch"]]
        self.recent = [(list(t), float(a)) for t, a in extra["recent"]]
        self.updates = int(extra["updates"])
