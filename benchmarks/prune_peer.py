"""Torch-Pruning as the structured-pruning peer, and ours vs it at equal FLOPs.

``tp_prune(model, input_shape, flops_ratio, round_to, ignored)``: Torch-Pruning's
``MetaPruner`` with group L2 importance (``GroupMagnitudeImportance(p=2)``: the norm summed
over every coupled member, normalised per group by its mean), global ranking, the pruning
ratio bisected until ``flops_ratio`` of the FLOPs (Torch-Pruning's own counter) is removed.
ViTs (``nn.MultiheadAttention``) are given to Torch-Pruning decomposed (the same
``SelfAttention`` nasforge prunes), with the embedding (residual stream) dim ignored; in
Torch-Pruning 1.6 this prunes the MLP hidden width only (its graph does not reach the q/k/v
out dims through the head reshape/matmul), while nasforge also prunes heads' dims.

``compare(model_name, ds, ratio, recipe)``: a zoo model trained on ``ds`` (cached under
$TMPDIR keyed by the recipe), pruned by nasforge and by Torch-Pruning to the same FLOPs,
both BN-recalibrated and fine-tuned with the same recipe (distillation from the unpruned
model); returns FLOPs, params and top-1 before/after fine-tuning of both. Imported by
``benchmarks/compression_models.py``; ``python benchmarks/prune_peer.py efficientnet_b0``
prints one comparison.

Measured (issue 14, AMD EPYC, 2 shared cores, 1 thread; EfficientNet-B0 width 1 trained 3
epochs on mnist5k as 3x32x32, 1000 test images; 50% FLOPs; BN recalibrated on 1024 images;
fine-tune 3 epochs distilled, lr 0.03), top-1 after fine-tune (FLOPs removed):
- seed 0 (base 88.9%), round_to 16: l1 89.4% (49.7%), group_l2 90.9% (50.0%), Torch-Pruning
  87.7% (51.1%)
- seed 0, round_to 8: l1 87.0% (50.0%), group_l2 87.5% (49.8%), Torch-Pruning 87.8% (50.4%)
- seed 1 (base 95.2%), round_to 16: l1 93.3% (49.8%), group_l2 94.2% (49.7%), Torch-Pruning
  90.6% (49.9%)
group_l2 beat l1 in all three (+0.5 to +1.5 points; the test set's noise is about +-1);
the issue's 6.0 vs 1.7 point gap did not reproduce with this recipe. ``compare`` prunes with
the CLI's default criterion (``compress.prune.importance``) unless the recipe names one.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.compression import zoo
from nasforge.compression.attention import SelfAttention, decompose_attention
from nasforge.compression.distill import DistillationLoss
from nasforge.compression.pruning import (
    ChannelPruner,
    ChannelPruningConfig,
    apply_plan,
    make_importance,
    recalibrate_bn,
)
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

DEFAULT_RECIPE: dict[str, Any] = {
    "base_epochs": 3,  # training of the unpruned model
    "base_lr": 0.05,
    "epochs": 3,  # fine-tuning after pruning (both pruners)
    "lr": 0.03,
    "round_to": 16,
    "min_keep": 8,
    "distill": True,
    "importance": None,  # nasforge's criterion; None: the CLI's default
    "peer": True,  # False: nasforge only
    "recal_samples": 1024,
    "seed": 0,
}


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, params) by Torch-Pruning's counter: one counter for both pruners (attention
    counted on the equal SelfAttention: the counter skips nn.MultiheadAttention's matmuls)."""
    import torch_pruning as tp

    model.eval()
    if any(isinstance(mod, nn.MultiheadAttention) for mod in model.modules()):
        model = decompose_attention(model).eval()
    ops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    return int(ops), int(params)


def _ignored_modules(model: nn.Module, ignored: Sequence[str | nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for item in ignored:
        if isinstance(item, nn.Module):
            out.append(item)
            continue
        for name, mod in model.named_modules():
            if name == item or name.startswith(item + "."):
                out.append(mod)
    return out


def _tp_once(
    model: nn.Module,
    input_shape: Sequence[int],
    ratio: float,
    round_to: int | None,
    ignored: Sequence[str | nn.Module],
) -> nn.Module:
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    if any(isinstance(mod, nn.MultiheadAttention) for mod in m.modules()):
        # torch's MHA ties its inner dims to the embedding dim; Torch-Pruning prunes heads'
        # dims on separate q/k/v Linear layers, i.e. on the same SelfAttention nasforge prunes
        m = decompose_attention(m).eval()
    ex = torch.zeros(1, *input_shape)
    ign = _ignored_modules(m, ignored)
    num_heads: dict[nn.Module, int] = {}
    attn = [mod for mod in m.modules() if isinstance(mod, SelfAttention)]
    for sa in attn:
        for lin in (sa.q, sa.k, sa.v):
            num_heads[lin] = sa.num_heads
    if attn:
        # transformers: the embedding dim (residual stream: patch conv, LayerNorms, attention
        # and MLP outputs, class token, position embedding) stays; heads' dims and the MLP
        # hidden width are pruned, as nasforge does
        embed = {sa.embed_dim for sa in attn}
        qkv = set(num_heads)
        for mod in m.modules():
            out = getattr(mod, "out_features", getattr(mod, "out_channels", None))
            if mod not in qkv and (isinstance(mod, nn.LayerNorm) or out in embed):
                ign.append(mod)
        ign.extend(sa.out_proj for sa in attn)
    pruner = tp.pruner.MetaPruner(
        m,
        ex,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        global_pruning=True,
        round_to=round_to,
        ignored_layers=ign,
        num_heads=num_heads,
        prune_head_dims=True,
        prune_num_heads=False,
    )
    pruner.step()
    for sa in attn:
        sa.head_dim = sa.q.out_features // sa.num_heads
    return m


def tp_prune(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_ratio: float,
    round_to: int | None = 16,
    ignored: Sequence[str | nn.Module] = (),
    steps: int = 9,
) -> nn.Module:
    """A pruned copy of ``model`` with Torch-Pruning removing ``flops_ratio`` of its FLOPs.

    The classifier (the model's last Linear) is always ignored (its outputs are the classes);
    ``ignored`` adds module names or modules. The channel ratio is bisected (``steps``
    tries) to the smallest one that removes at least ``flops_ratio`` of the MACs.
    """
    linears = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    ign = [*ignored, *linears[-1:]]
    base, _ = count_flops(model, input_shape)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        r = (lo + hi) / 2
        m = _tp_once(model, input_shape, r, round_to, ign)
        ops, _ = count_flops(m, input_shape)
        if 1 - ops / base >= flops_ratio:
            hi, best = r, m
        else:
            lo = r
    return best if best is not None else _tp_once(model, input_shape, hi, round_to, ign)


def nasforge_prune(
    model: nn.Module,
    input_shape: Sequence[int],
    flops_ratio: float,
    round_to: int = 16,
    min_keep: int = 8,
    importance: str = "l1",
) -> nn.Module:
    """A pruned copy of ``model`` by nasforge's ``ChannelPruner`` (the CLI's defaults: the
    ``importance`` criterion, global ranking) removing ``flops_ratio`` of the conv/linear MACs."""
    cfg = ChannelPruningConfig(flops_ratio, "flops", "global", round_to, min_keep)
    pruner = ChannelPruner(make_importance(importance), cfg)
    m = copy.deepcopy(model).eval()
    return apply_plan(m, pruner.plan(m, input_shape))


def _finetune(model: nn.Module, teacher: nn.Module, ds: Any, recipe: dict[str, Any]) -> None:
    loss = DistillationLoss(teacher, 4.0, 0.7, memoize=True) if recipe["distill"] else None
    cfg = TrainConfig(
        epochs=recipe["epochs"], lr=recipe["lr"], label_smoothing=0.0, seed=recipe["seed"]
    )
    train_model(model, ds.x_train, ds.y_train, cfg, loss_fn=loss)
    model.eval()


def trained_model(model_name: str, ds: Any, recipe: dict[str, Any], **kw: Any) -> nn.Module:
    """Zoo model ``model_name`` trained on ``ds`` (state dict cached under $TMPDIR, keyed by
    the recipe; loaded with ``weights_only=True``)."""
    key = json.dumps(
        [
            model_name,
            ds.name,
            list(ds.input_shape),
            recipe["base_epochs"],
            recipe["base_lr"],
            recipe["seed"],
            sorted(kw.items()),
        ]
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"nasforge_prune_peer_{model_name}_{digest}.pt"
    torch.manual_seed(recipe["seed"])
    model = zoo.MODELS[model_name](num_classes=10, in_channels=ds.input_shape[0], **kw)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    cfg = TrainConfig(epochs=recipe["base_epochs"], lr=recipe["base_lr"], seed=recipe["seed"])
    train_model(model, ds.x_train, ds.y_train, cfg)
    torch.save(model.state_dict(), cache)
    return model.eval()


def compare(
    model_name: str,
    ds: Any,
    ratio: float = 0.5,
    recipe: dict[str, Any] | None = None,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Ours vs Torch-Pruning on zoo model ``model_name`` (or the trained ``model``) at equal
    FLOPs: each pruned, BN-recalibrated, fine-tuned with the same recipe.

    Returns ``{"base": {...}, "nasforge": {...}, "torch_pruning": {...}}``: ``macs``,
    ``params``, ``acc`` (unpruned), ``acc_pruned`` (after BN recalibration), ``acc_finetuned``,
    ``drop`` (points, base minus fine-tuned), ``seconds``; ``torch_pruning`` holds ``error``
    instead when Torch-Pruning failed.
    """
    rc = {**DEFAULT_RECIPE, **(recipe or {})}
    if rc["importance"] is None:
        from nasforge.compression.config import ChannelPruneConfig

        rc["importance"] = ChannelPruneConfig().importance
    shape = tuple(ds.input_shape)
    base = model if model is not None else trained_model(model_name, ds, rc)
    base.eval()
    teacher = copy.deepcopy(base).eval()
    acc0 = evaluate_accuracy(base, ds.x_test, ds.y_test)
    macs0, params0 = count_flops(base, shape)
    recal = [ds.x_train[i : i + 64] for i in range(0, rc["recal_samples"], 64)]
    out: dict[str, Any] = {"base": {"macs": macs0, "params": params0, "acc": acc0}}

    def finish(name: str, pruned: nn.Module, t0: float) -> None:
        recalibrate_bn(pruned, recal)
        macs, params = count_flops(pruned, shape)
        acc_p = evaluate_accuracy(pruned, ds.x_test, ds.y_test)
        _finetune(pruned, teacher, ds, rc)
        acc_f = evaluate_accuracy(pruned, ds.x_test, ds.y_test)
        out[name] = {
            "macs": macs,
            "params": params,
            "flops_removed": 1 - macs / macs0,
            "acc_pruned": acc_p,
            "acc_finetuned": acc_f,
            "drop": 100 * (acc0 - acc_f),
            "seconds": time.perf_counter() - t0,
        }

    t0 = time.perf_counter()
    ours = nasforge_prune(base, shape, ratio, rc["round_to"], rc["min_keep"], rc["importance"])
    finish("nasforge", ours, t0)
    # equal FLOPs: Torch-Pruning is bisected to what ours removed, by the same counter
    target = out["nasforge"]["flops_removed"]
    if not rc["peer"]:
        return out
    t0 = time.perf_counter()
    try:
        tpm = tp_prune(base, shape, target, rc["round_to"])
    except Exception as exc:  # noqa: BLE001 - a failing peer is a result to report
        out["torch_pruning"] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        finish("torch_pruning", tpm, t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(zoo.MODELS))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--recipe", default="{}", help="JSON overriding DEFAULT_RECIPE")
    args = ap.parse_args()
    from nasforge.data import adapt_input, load_dataset

    torch.set_num_threads(int(os.environ.get("NASFORGE_THREADS", "1")))
    ds = adapt_input(load_dataset("mnist5k"), (3, 32, 32))
    res = compare(args.model, ds, args.ratio, json.loads(args.recipe))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
