"""PASCAL VOC 2007 classification with linear SVMs on frozen features, as VirTex did.

Protocol (the original's ``scripts/clf_voc07.py`` and ``configs/downstream/voc07_clf.yaml``):

1. Images: shorter side to 256, centre crop 224, ImageNet normalisation.
2. Features: the last stage (``layer4``), global average pooled, L2-normalised.
3. One ``LinearSVC`` per class (``C`` in {0.01, 0.1, 1.0, 10.0}, ``class_weight={1: 2, -1: 1}``,
   squared hinge, L2 penalty, ``max_iter=2000``); ``C`` picked by the mean average precision of a
   3-fold (stratified, unshuffled) cross-validation on trainval; the chosen SVM is refit on all
   of trainval.
4. Test AP per class on the SVM's decision values, ignoring the images marked difficult for
   that class (flag ``0`` in ``<class>_test.txt``); mAP = mean over the 20 classes.

Difficult images in trainval: the original turns the ``0`` flag into label ``-1`` and then
trains on every image with ``label <= 0`` as a negative, so *difficult trainval images are
negatives*. That is the default here (``train_difficult="negative"``); ``"exclude"`` drops
them from each class's training set instead.

Classes run in parallel worker processes (``fork`` where available, as the original's
``multiprocessing.Pool``; one BLAS/OpenMP thread each). Tiny datasets: a cross-validation fold
whose training part lacks positives is skipped (the original would stop with an error).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

__all__ = [
    "SvmConfig",
    "Voc07Result",
    "average_precision",
    "l2_normalize",
    "train_test_svms",
]

Array = NDArray[Any]


def average_precision(scores: Array, positives: Array) -> float:
    """Average precision of a ranking: ``sum_k (R_k - R_{k-1}) P_k`` over score thresholds.

    Tied scores form one threshold (the definition of
    ``sklearn.metrics.average_precision_score``, which the original used). ``nan`` when there
    is no positive.

    Args:
        scores: ``(N,)`` higher = more confident.
        positives: ``(N,)`` bool (or 0/1).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives).astype(bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and labels {positives.shape} differ in shape")
    total = int(positives.sum())
    if total == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    ranked_scores, ranked = scores[order], positives[order]
    tp = np.cumsum(ranked)
    # The last index of each run of tied scores is a threshold.
    last = np.r_[ranked_scores[1:] != ranked_scores[:-1], True]
    tp_at = tp[last].astype(np.float64)
    seen = (np.flatnonzero(last) + 1).astype(np.float64)
    precision = tp_at / seen
    recall = tp_at / total
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * precision))


def l2_normalize(features: Array, eps: float = 1e-12) -> Array:
    """Rows divided by their L2 norm (rows of zeros stay zero)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, eps)


@dataclass(frozen=True)
class SvmConfig:
    """The per-class SVM sweep (defaults: the original's).

    Attributes:
        costs: values of ``C`` tried.
        positive_weight: ``class_weight`` of the positive class (negatives weigh 1).
        max_iter: liblinear iterations.
        folds: cross-validation folds (stratified, unshuffled, as ``cross_val_score``).
        dual: liblinear's dual solver (the original's sklearn default); ``False`` is the primal
            solver (faster when samples outnumber features; same optimum up to tolerance).
        train_difficult: difficult trainval images as ``negative`` (original) or ``exclude``.
        random_state: liblinear's shuffling seed (the original left it unseeded).
    """

    costs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    positive_weight: float = 2.0
    max_iter: int = 2000
    folds: int = 3
    dual: bool = True
    train_difficult: Literal["negative", "exclude"] = "negative"
    random_state: int = 0


@dataclass
class Voc07Result:
    """Per-class outcome of the sweep.

    Attributes:
        classes: class names.
        ap: test AP per class (``nan`` when a class has no non-difficult test positive).
        best_cost: chosen ``C`` per class.
        cv_ap: mean cross-validated AP of the chosen ``C`` per class.
        seconds: wall time of the sweep.
        not_converged: number of liblinear fits that hit ``max_iter``.
    """

    classes: list[str]
    ap: list[float]
    best_cost: list[float]
    cv_ap: list[float]
    seconds: float = 0.0
    not_converged: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_ap(self) -> float:
        """Mean test AP over the classes that have test positives."""
        valid = [a for a in self.ap if not math.isnan(a)]
        return float(np.mean(valid)) if valid else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mAP"] = self.mean_ap
        return data

    def table(self) -> str:
        """A Markdown table: class, C, CV AP, test AP (percent), then mAP."""
        lines = ["| class | C | CV AP | test AP |", "|---|---|---|---|"]
        for name, cost, cv, ap in zip(
            self.classes, self.best_cost, self.cv_ap, self.ap, strict=True
        ):
            lines.append(f"| {name} | {cost:g} | {100 * cv:.2f} | {100 * ap:.2f} |")
        lines.append(f"| **mAP** | | | **{100 * self.mean_ap:.2f}** |")
        return "\n".join(lines)


# Worker-process state (set once per worker by _init_worker).
_SHARED: dict[str, Any] = {}


def _init_worker(arrays: dict[str, Array], config: SvmConfig) -> None:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1)
    _SHARED.update(arrays)
    _SHARED["config"] = config


def _fit(config: SvmConfig, cost: float, x: Array, y: Array) -> tuple[Any, bool]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    svm = LinearSVC(
        C=cost,
        class_weight={1: config.positive_weight, -1: 1.0},
        penalty="l2",
        loss="squared_hinge",
        max_iter=config.max_iter,
        dual=config.dual,
        random_state=config.random_state,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(x, y)
    return svm, any(issubclass(w.category, ConvergenceWarning) for w in caught)


def _one_class(k: int) -> tuple[int, float, float, float, int]:
    """Sweep, refit and test the SVM of class ``k`` on the worker's shared arrays."""
    from sklearn.model_selection import StratifiedKFold

    config: SvmConfig = _SHARED["config"]
    x, labels, difficult = _SHARED["train_x"], _SHARED["train_y"][:, k], _SHARED["train_d"][:, k]
    keep = ~difficult if config.train_difficult == "exclude" else np.ones_like(difficult)
    x, y = x[keep], np.where(labels[keep] > 0, 1, -1)
    with warnings.catch_warnings():
        # Few positives (tiny sets): StratifiedKFold warns; folds without both labels are
        # skipped below.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        folds = list(StratifiedKFold(n_splits=config.folds).split(x, y))
    not_converged = 0
    best_cost, best_cv = config.costs[0], -math.inf
    for cost in config.costs:
        aps = []
        for train_rows, val_rows in folds:
            if len(np.unique(y[train_rows])) < 2:
                aps.append(math.nan)
                continue
            svm, failed = _fit(config, cost, x[train_rows], y[train_rows])
            not_converged += failed
            aps.append(average_precision(svm.decision_function(x[val_rows]), y[val_rows] > 0))
        cv = float(np.nanmean(aps)) if not all(math.isnan(a) for a in aps) else math.nan
        # Strictly greater: ties keep the smaller C, as the original.
        if not math.isnan(cv) and cv > best_cv:
            best_cost, best_cv = cost, cv
    svm, failed = _fit(config, best_cost, x, y)
    not_converged += failed
    test_x, test_y, test_d = _SHARED["test_x"], _SHARED["test_y"][:, k], _SHARED["test_d"][:, k]
    scores = svm.decision_function(test_x[~test_d])
    ap = average_precision(scores, test_y[~test_d] > 0)
    return k, ap, best_cost, best_cv if best_cv > -math.inf else math.nan, not_converged


def _usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask under Slurm/cgroups), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def train_test_svms(
    train_x: Array,
    train_y: Array,
    train_difficult: Array,
    test_x: Array,
    test_y: Array,
    test_difficult: Array,
    *,
    classes: Sequence[str] | None = None,
    config: SvmConfig | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> Voc07Result:
    """Train one SVM per class on trainval features and report test AP.

    Args:
        train_x: ``(N, C)`` features (already L2-normalised if the protocol wants it).
        train_y: ``(N, K)`` 1 for positives, 0 otherwise.
        train_difficult: ``(N, K)`` bool, difficult flags.
        test_x, test_y, test_difficult: the same for the test split.
        classes: names of the ``K`` classes (default: ``class0``...).
        config: the sweep.
        jobs: worker processes (default: the CPUs this process may use); ``1`` runs in this
            process.
        progress: show a progress bar over classes.

    Raises:
        ValueError: a class without positive (or without negative) training images, naming it.
    """
    config = config or SvmConfig()
    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    count = train_y.shape[1]
    names = list(classes) if classes is not None else [f"class{k}" for k in range(count)]
    if len(names) != count or test_y.shape[1] != count:
        raise ValueError(
            f"label columns: train {count}, test {test_y.shape[1]}, names {len(names)}"
        )
    train_d = np.asarray(train_difficult, dtype=bool)
    usable = ~train_d if config.train_difficult == "exclude" else np.ones_like(train_d)
    for k, name in enumerate(names):
        positives = int(((train_y[:, k] > 0) & usable[:, k]).sum())
        negatives = int(((train_y[:, k] <= 0) & usable[:, k]).sum())
        if positives == 0 or negatives == 0:
            raise ValueError(
                f"class {name!r} has {positives} positive and {negatives} negative training "
                "images: an SVM needs both"
            )
    arrays = {
        "train_x": np.ascontiguousarray(train_x, dtype=np.float32),
        "train_y": train_y,
        "train_d": train_d,
        "test_x": np.ascontiguousarray(test_x, dtype=np.float32),
        "test_y": test_y,
        "test_d": np.asarray(test_difficult, dtype=bool),
    }
    jobs = min(jobs or _usable_cpus(), count)
    results: list[tuple[int, float, float, float, int]] = []
    start = time.perf_counter()
    bar = tqdm(total=count, desc="VOC07 SVMs", unit="class", disable=not progress, leave=False)
    if jobs == 1:
        saved = dict(_SHARED)
        _init_worker(arrays, config)
        try:
            for k in range(count):
                results.append(_one_class(k))
                bar.update()
        finally:
            _SHARED.clear()
            _SHARED.update(saved)
    else:
        # fork (as the original's multiprocessing.Pool): workers start at once and share the
        # arrays copy-on-write; they run only numpy/liblinear, never torch.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(jobs, context, _init_worker, (arrays, config)) as pool:
            futures = [pool.submit(_one_class, k) for k in range(count)]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    bar.close()
    results.sort()
    return Voc07Result(
        classes=names,
        ap=[r[1] for r in results],
        best_cost=[r[2] for r in results],
        cv_ap=[r[3] for r in results],
        seconds=time.perf_counter() - start,
        not_converged=sum(r[4] for r in results),
    )
