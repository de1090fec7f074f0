"""The OFA accuracy predictor is fitted once per sample and loaded by later targets.

``nasforge ofa specialize`` fitted the predictor again for every target (4-8 s). It is now kept
in ``ofa/predictor.npz`` (arrays and a JSON header; read with ``allow_pickle=False``) keyed by
what the fit saw and how. The oracle is the fit itself: a loaded predictor must predict
exactly what the fitted one predicts, for both kinds, on archs it never saw. Another sample,
kind or seed, a file of another version, or a damaged file, fits again and says so. The file
holds ``AccuracyPredictor.state()``, loaded by ``AccuracyPredictor.from_state``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

# the tiny trained OFA run of the specialize tests (a module-scoped fixture) and its helper
from test_ofa_specialize import small_space, stand_in_accuracy
from test_ofa_specialize_run import specialise, trained  # noqa: F401

from nasforge.experiment import ofa_cache
from nasforge.experiment.ofa_cache import PREDICTOR_FILE, load_or_fit_predictor
from nasforge.oneshot.ofa.accuracy import STATE_VERSION
from nasforge.oneshot.ofa.specialize import AccuracyPredictor, sample_subnets
from nasforge.space import Arch
from nasforge.spaces.mobile import MobileSpace


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=300), buf


@pytest.fixture(scope="module")
def data() -> tuple[MobileSpace, list[tuple[Arch, float]], list[Arch]]:
    sp = small_space()
    samples = sample_subnets(sp, stand_in_accuracy(sp), 12, seed=0)
    seen = {a.key for a, _ in samples}
    rng = np.random.default_rng(5)
    unseen = [a for a in (sp.sample(rng) for _ in range(40)) if a.key not in seen]
    return sp, samples, unseen


def forbid_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fit(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the predictor was fitted again")

    monkeypatch.setattr(ofa_cache.AccuracyPredictor, "fit", no_fit)


Data = tuple[MobileSpace, list[tuple[Arch, float]], list[Arch]]


@pytest.fixture(scope="module")
def cached(
    data: Data, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, AccuracyPredictor, str]]:
    """Per kind: a run dir whose cache holds the predictor fitted there, the predictor the
    fit returned (``AccuracyPredictor.fit``'s own) and what was said."""
    sp, samples, _ = data
    out = {}
    for kind in ("mlp", "gp"):
        run = tmp_path_factory.mktemp(kind)
        con, buf = console()
        fitted, info = load_or_fit_predictor(run, sp, samples, kind, 3, con)
        assert info["reused"] is False and info["fit_seconds"] > 0
        assert info["file"] == str(run / "ofa" / PREDICTOR_FILE)
        out[kind] = (run, fitted, buf.getvalue())
    return out


def copy_cache(source: Path, run: Path) -> Path:
    path = run / "ofa" / PREDICTOR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((source / "ofa" / PREDICTOR_FILE).read_bytes())
    return path


@pytest.mark.parametrize("kind", ["mlp", "gp"])
def test_second_target_loads_the_predictor_and_predicts_exactly_the_same(
    data: Data,
    cached: dict[str, tuple[Path, AccuracyPredictor, str]],
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sp, samples, unseen = data
    run, fitted, said = cached[kind]
    assert "fitted the accuracy predictor" in said
    forbid_fit(monkeypatch)
    con, out = console()
    loaded, info = load_or_fit_predictor(run, sp, samples, kind, 3, con)
    assert info["reused"] is True and out.getvalue() == ""
    np.testing.assert_array_equal(loaded.predict(unseen), fitted.predict(unseen))
    np.testing.assert_array_equal(
        loaded.predict([a for a, _ in samples]), fitted.predict([a for a, _ in samples])
    )
    assert loaded.summary() == fitted.summary() and loaded.kind == kind


def test_the_cache_is_data_only(cached: dict[str, tuple[Path, AccuracyPredictor, str]]) -> None:
    run = cached["mlp"][0]
    with np.load(run / "ofa" / PREDICTOR_FILE, allow_pickle=False) as npz:
        arrays = {k: np.array(npz[k]) for k in npz.files}
    assert all(a.dtype != object for a in arrays.values())
    header = json.loads(str(arrays["header"]))
    assert header["kind"] == "mlp" and header["seed"] == 3 and header["folds"] == 5
    assert len(header["data_sha256"]) == 64
    assert not list((run / "ofa").glob(".*tmp*"))  # written atomically, nothing left


@pytest.mark.parametrize(
    ("change", "said"),
    [("seed", "another seed"), ("kind", "another kind"), ("samples", "another data_sha256")],
)
def test_another_sample_kind_or_seed_is_fitted_again(
    data: Data,
    cached: dict[str, tuple[Path, AccuracyPredictor, str]],
    change: str,
    said: str,
    tmp_path: Path,
) -> None:
    sp, samples, unseen = data
    # the GP is fitted again in each case (cheap); the kind case starts from the MLP's cache
    copy_cache(cached["mlp" if change == "kind" else "gp"][0], tmp_path)
    seed, used = 3, samples
    if change == "seed":
        seed = 1
    elif change == "samples":
        used = [(a, acc + 0.01 * i) for i, (a, acc) in enumerate(samples)]
    con, out = console()
    got, info = load_or_fit_predictor(tmp_path, sp, used, "gp", seed, con)
    assert info["reused"] is False and said in out.getvalue()
    direct = AccuracyPredictor.fit(sp, used, "gp", seed)
    np.testing.assert_array_equal(got.predict(unseen), direct.predict(unseen))
    # the new fit replaced the old one: it is the one reused next
    again = load_or_fit_predictor(tmp_path, sp, used, "gp", seed, con)[1]["reused"]
    assert again is True, out.getvalue()


@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("gp", "garbage"),
        ("gp", "truncated"),
        ("gp", "bad state"),
        pytest.param("mlp", "bad state", marks=pytest.mark.slow),  # an MLP refit: ~5 s
    ],
)
def test_a_damaged_cache_is_fitted_again_with_a_log_line(
    data: Data,
    cached: dict[str, tuple[Path, AccuracyPredictor, str]],
    kind: str,
    damage: str,
    tmp_path: Path,
) -> None:
    sp, samples, unseen = data
    path = copy_cache(cached[kind][0], tmp_path)
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not an npz" * 10)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:  # a readable file whose state does not fit the surrogate
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.array(npz[k]) for k in npz.files}
        name = "theta" if kind == "gp" else "w1"
        arrays[name] = arrays[name][..., :-1]
        with path.open("wb") as f:
            np.savez(f, **arrays)
    con, out = console()
    got, info = load_or_fit_predictor(tmp_path, sp, samples, kind, 3, con)
    assert info["reused"] is False
    said = " ".join(out.getvalue().split())
    assert "is damaged" in said and "fitting the accuracy predictor again" in said
    np.testing.assert_array_equal(got.predict(unseen), cached[kind][1].predict(unseen))
    assert load_or_fit_predictor(tmp_path, sp, samples, kind, 3, con)[1]["reused"] is True


def test_a_cache_of_another_version_is_fitted_again_with_a_log_line(
    data: Data, cached: dict[str, tuple[Path, AccuracyPredictor, str]], tmp_path: Path
) -> None:
    """A file of the earlier format (state read off closures, keyed by a code hash) or of
    another fit version is not loaded, even when its arrays would fit."""
    sp, samples, unseen = data
    path = copy_cache(cached["gp"][0], tmp_path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: np.array(npz[k]) for k in npz.files}
    header = json.loads(str(arrays["header"]))
    assert header["format"] == ofa_cache.PREDICTOR_FORMAT
    assert header["state_version"] == STATE_VERSION
    old = {k: v for k, v in header.items() if k != "state_version"}
    old.update(format="nasforge-ofa-predictor/1", code="0123456789abcdef")
    arrays["header"] = np.array(json.dumps(old))
    with path.open("wb") as f:
        np.savez(f, **arrays)
    con, out = console()
    got, info = load_or_fit_predictor(tmp_path, sp, samples, "gp", 3, con)
    said = " ".join(out.getvalue().split())
    assert info["reused"] is False
    assert "another version of nasforge" in said and "nasforge-ofa-predictor/1" in said
    np.testing.assert_array_equal(got.predict(unseen), cached["gp"][1].predict(unseen))
    assert load_or_fit_predictor(tmp_path, sp, samples, "gp", 3, con)[1]["reused"] is True


def test_a_predictor_without_a_state_is_not_cached(data: Data) -> None:
    """Only a predictor made by ``fit`` / ``from_state`` has a state; one built around any
    other model says so (``None``) instead of giving something wrong to keep."""
    sp, _, _ = data
    plain = AccuracyPredictor(sp, "mlp", lambda x: x.sum(1), 12, (0.5, 0.1, 5))
    assert plain.state() is None


@pytest.mark.parametrize("kind", ["mlp", "gp"])
def test_from_state_is_the_fitted_predictor_and_checks_the_state(
    data: Data, cached: dict[str, tuple[Path, AccuracyPredictor, str]], kind: str
) -> None:
    sp, samples, unseen = data
    fitted = cached[kind][1]
    state = fitted.state()
    assert state is not None and all(a.dtype != object for a in state.values())
    cv = (fitted.cv_kendall_tau, fitted.cv_mae, fitted.folds)
    again = AccuracyPredictor.from_state(sp, samples, kind, state, cv)
    np.testing.assert_array_equal(again.predict(unseen), fitted.predict(unseen))
    assert again.summary() == fitted.summary()
    # a state of the other kind, or with an array missing, is refused naming what is wrong
    other = "gp" if kind == "mlp" else "mlp"
    with pytest.raises(ValueError, match="state"):
        AccuracyPredictor.from_state(sp, samples, other, state, cv)
    first = next(iter(state))
    with pytest.raises(ValueError, match=first if kind == "gp" else "expected the arrays"):
        AccuracyPredictor.from_state(
            sp, samples, kind, {k: state[k] for k in state if k != first}, cv
        )


# -- through `nasforge ofa specialize` -----------------------------------------------------------
@pytest.mark.slow  # trains a tiny OFA run (~40 s)
def test_the_second_target_of_a_run_loads_the_predictor(
    trained: dict[str, Any],  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = specialise(trained, 10.0, label="cache-first")
    assert first["predictor_cache"]["file"] == str(trained["run"] / "ofa" / PREDICTOR_FILE)
    forbid_fit(monkeypatch)
    second = specialise(trained, 5.0, label="cache-second")
    assert second["predictor_cache"]["reused"] is True
    assert second["accuracy_predictor"] == first["accuracy_predictor"]
