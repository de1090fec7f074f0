"""Knowledge distillation losses for fine-tuning after pruning and during QAT.

Both losses follow ``train_model``'s ``loss_fn(logits, targets, inputs)`` contract, so they
plug into the one training loop. The teacher runs in eval mode without gradients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss:
    """Hinton logit distillation: ``alpha * T^2 * KL(p_T(teacher) || p_T(student))
    + (1 - alpha) * CE(student, targets)``.

    With ``memoize`` the teacher's logits are kept per input sample (keyed by a hash of
    its bytes), so each distinct sample costs one teacher forward for the whole
    fine-tuning run instead of one per epoch: the teacher is frozen and in eval mode, so
    its output for a sample never changes. Augmented inputs simply miss the memo. Leave
    it off when something hooks the teacher's forward (feature distillation does).
    """

    def __init__(
        self,
        teacher: nn.Module,
        temperature: float = 4.0,
        alpha: float = 0.7,
        label_smoothing: float = 0.0,
        memoize: bool = False,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill.alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.t, self.alpha, self.ls = temperature, alpha, label_smoothing
        self.memo: dict[bytes, torch.Tensor] | None = {} if memoize else None

    def kd(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.t
        return (
            F.kl_div(
                F.log_softmax(student_logits / t, 1),
                F.log_softmax(teacher_logits / t, 1),
                reduction="batchmean",
                log_target=True,
            )
            * t
            * t
        )

    @torch.no_grad()
    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs`` (from the memo where possible)."""
        if self.memo is None:
            return self.teacher(inputs)  # type: ignore[no-any-return]
        rows = inputs.detach().cpu().contiguous()
        keys = [hashlib.blake2b(r.numpy().tobytes(), digest_size=16).digest() for r in rows]
        missing = [i for i, k in enumerate(keys) if k not in self.memo]
        if missing:
            out = self.teacher(inputs[missing])
            for i, row in zip(missing, out):
                self.memo[keys[i]] = row
        return torch.stack([self.memo[k] for k in keys])

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        teacher_logits = self.teacher_logits(inputs).to(logits.device)
        ce = F.cross_entropy(logits, targets, label_smoothing=self.ls)
        return self.alpha * self.kd(logits, teacher_logits) + (1 - self.alpha) * ce


class FeatureDistiller(nn.Module):
    """Wraps a student for feature distillation with learned 1x1 projections.

    ``pairs`` are (student layer, teacher layer) module names. A projection (1x1 conv, or
    linear for 2-D features) maps each student feature to the teacher's channel count;
    the loss adds ``beta * mean MSE(proj(student), teacher)`` to the logit loss. Train the
    *wrapper* (so the projections are optimised) and keep ``.student`` afterwards.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        pairs: Sequence[tuple[str, str]],
        input_shape: Sequence[int],
        beta: float = 1.0,
        temperature: float = 4.0,
        alpha: float = 0.7,
    ) -> None:
        super().__init__()
        self.student = student
        self.logit_loss = DistillationLoss(teacher, temperature, alpha)
        self.teacher = self.logit_loss.teacher
        self.pairs, self.beta = list(pairs), beta
        self._s: dict[str, torch.Tensor] = {}
        self._t: dict[str, torch.Tensor] = {}
        for s_name, t_name in self.pairs:
            student.get_submodule(s_name).register_forward_hook(self._store(self._s, s_name))
            self.teacher.get_submodule(t_name).register_forward_hook(self._store(self._t, t_name))
        with torch.no_grad():
            was = student.training
            student.eval()
            x = torch.zeros(2, *input_shape)
            student(x)
            self.teacher(x)
            student.train(was)
        projs: list[nn.Module] = []
        for s_name, t_name in self.pairs:
            fs, ft = self._s[s_name], self._t[t_name]
            if fs.dim() == 2:
                projs.append(nn.Linear(fs.shape[1], ft.shape[1]))
            else:
                conv = nn.Conv1d if fs.dim() == 3 else nn.Conv2d
                projs.append(conv(fs.shape[1], ft.shape[1], 1))
        self.projections = nn.ModuleList(projs)

    @staticmethod
    def _store(d: dict[str, torch.Tensor], name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            d[name] = out

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        """The ``loss_fn`` to train this wrapper with."""
        base = self.logit_loss(logits, targets, inputs)  # also runs the teacher's hooks
        feat = torch.zeros((), device=logits.device)
        for proj, (s_name, t_name) in zip(self.projections, self.pairs):
            fs, ft = proj(self._s[s_name]), self._t[t_name].detach()
            if fs.shape[2:] != ft.shape[2:]:
                if fs.dim() == 4:
                    fs = F.adaptive_avg_pool2d(fs, (ft.shape[2], ft.shape[3]))
                else:
                    fs = F.adaptive_avg_pool1d(fs, ft.shape[2])
            feat = feat + F.mse_loss(fs, ft)
        return base + self.beta * feat / max(len(self.pairs), 1)
