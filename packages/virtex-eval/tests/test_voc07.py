"""VOC07 linear SVMs: AP definition, the original's sweep, difficult handling, the command."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import average_precision_score
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from virtex_data.downstream import VOC_CLASSES
from virtex_eval.cli.voc07 import voc07_command
from virtex_eval.features import probe_transform, voc07_split
from virtex_eval.voc07 import SvmConfig, average_precision, l2_normalize, train_test_svms

# ---------------------------------------------------------------------------------------------
# Tiny VOC tree, written the way the VOC devkit does: XML annotations with difficult flags, and
# ImageSets/Main/<class>_<split>.txt derived from them (1: a non-difficult object of the class,
# 0: only difficult ones, -1: none), plus <split>.txt.


def _xml(objects: list[tuple[str, bool]]) -> str:
    parts = [
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        for name, difficult in objects
    ]
    size = "<size><width>64</width><height>48</height></size>"
    return f"<annotation>{size}{''.join(parts)}</annotation>"


def make_voc(root: Path, per_split: int = 60, seed: int = 0) -> Path:
    """``root/VOC2007`` with ``per_split`` trainval and test images; each image holds objects
    of 2 classes (one object sometimes difficult); every class is positive in both splits."""
    import xml.etree.ElementTree as ET

    rng = np.random.default_rng(seed)
    voc = root / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True)
    for split, offset in (("trainval", 0), ("test", 1000)):
        ids = [f"{offset + n:06d}" for n in range(per_split)]
        flags = {name: [] for name in VOC_CLASSES}
        for n, image_id in enumerate(ids):
            first, second = n % 20, (n * 7 + 3) % 20
            objects = [(VOC_CLASSES[first], False), (VOC_CLASSES[second], n % 5 == 0)]
            (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(objects))
            pixels = rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg")
            tree = ET.parse(voc / "Annotations" / f"{image_id}.xml")
            present: dict[str, int] = {}
            for obj in tree.iter("object"):
                name, hard = obj.findtext("name"), obj.findtext("difficult") == "1"
                assert name is not None
                present[name] = max(present.get(name, 0), 0 if hard else 1)
            for name in VOC_CLASSES:
                flags[name].append(present.get(name, -1))
        for name in VOC_CLASSES:
            lines = [f"{i} {f:2d}" for i, f in zip(ids, flags[name], strict=True)]
            (voc / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc


# ---------------------------------------------------------------------------------------------


def test_average_precision_by_hand_and_against_sklearn() -> None:
    # Ranked: + - + -  -> precision 1 at recall 1/2, 2/3 at recall 1.
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )
    assert average_precision([3, 2, 1], [1, 1, 1]) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no positive: nan, without dividing by zero
        assert math.isnan(average_precision([1.0, 2.0], [0, 0]))
    for scores, labels in (([0.1, 0.2], [1, 0, 1]), ([0.1, 0.2, 0.3], [1, 0])):
        with pytest.raises(ValueError, match=r"scores \(\d,\) and labels \(\d,\) differ"):
            average_precision(scores, labels)
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, 50).astype(float)  # many ties
        labels = rng.random(50) < 0.3
        labels[0] = True
        assert average_precision(scores, labels) == pytest.approx(
            average_precision_score(labels, scores)
        )


def _separable(n: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random((n, classes)) < 0.3).astype(np.float32)
    labels[np.arange(n) % classes == 0, 0] = 1.0  # every class has positives
    for k in range(classes):
        labels[k::classes, k] = 1.0
    features = np.concatenate([labels * 3.0, rng.normal(0, 0.3, (n, 8))], axis=1)
    return l2_normalize(features), labels


def test_features_that_encode_the_label_give_map_one_random_give_chance() -> None:
    rng = np.random.default_rng(1)
    train_x, train_y = _separable(90, 4, rng)
    test_x, test_y = _separable(60, 4, rng)
    none_train, none_test = np.zeros_like(train_y, bool), np.zeros_like(test_y, bool)
    result = train_test_svms(
        train_x, train_y, none_train, test_x, test_y, none_test, jobs=1, progress=False
    )
    assert result.mean_ap == pytest.approx(1.0)
    noise = train_test_svms(
        rng.normal(size=(90, 16)), train_y, none_train, rng.normal(size=(60, 16)), test_y,
        none_test, jobs=1, progress=False,
    )  # fmt: skip
    prevalence = float(test_y.mean())
    assert abs(noise.mean_ap - prevalence) < 0.2 and noise.mean_ap < 0.7


def _original_one_class(train_x, train_y, test_x, test_y, test_d):  # type: ignore[no-untyped-def]
    """The original clf_voc07.py procedure for one class (labels 1 / 0 / difficult)."""
    y = np.where(train_y > 0, 1, -1)
    best_ap, best = 0.0, None
    for cost in (0.01, 0.1, 1.0, 10.0):
        clf = LinearSVC(
            C=cost, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge",
            max_iter=2000, dual=True, random_state=0,
        )  # fmt: skip
        ap = cross_val_score(clf, train_x, y, cv=3, scoring="average_precision").mean()
        clf.fit(train_x, y)
        if ap > best_ap:
            best_ap, best = ap, (cost, clf)
    assert best is not None
    keep = ~test_d
    return best[0], average_precision_score(
        test_y[keep] > 0, best[1].decision_function(test_x[keep])
    )


def test_sweep_matches_the_original_procedure_and_parallel_equals_sequential() -> None:
    rng = np.random.default_rng(2)
    classes, dim = 3, 12
    centres = rng.normal(size=(classes, dim))
    train_y = (rng.random((120, classes)) < 0.35).astype(np.float32)
    test_y = (rng.random((80, classes)) < 0.35).astype(np.float32)
    train_x = l2_normalize(train_y @ centres + rng.normal(0, 1.2, (120, dim)))
    test_x = l2_normalize(test_y @ centres + rng.normal(0, 1.2, (80, dim)))
    train_d = rng.random(train_y.shape) < 0.1
    test_d = rng.random(test_y.shape) < 0.1
    train_y[train_d] = 0  # the VOC flag 0: not a positive
    test_y[test_d] = 0
    sequential = train_test_svms(
        train_x, train_y, train_d, test_x, test_y, test_d, jobs=1, progress=False
    )
    parallel = train_test_svms(
        train_x, train_y, train_d, test_x, test_y, test_d, jobs=2, progress=False
    )
    assert parallel.ap == sequential.ap and parallel.best_cost == sequential.best_cost
    for k in range(classes):
        cost, ap = _original_one_class(train_x, train_y[:, k], test_x, test_y[:, k], test_d[:, k])
        assert sequential.best_cost[k] == cost
        assert sequential.ap[k] == pytest.approx(ap, abs=1e-9)


def test_cross_validation_ties_keep_the_first_cost_as_the_original() -> None:
    """Features that encode the labels: every C reaches CV AP 1.0 on every class (a four-way
    tie). The original (clf_voc07.py) keeps a C only when its mean CV AP is strictly greater
    than the best so far, walking the costs in the order given: the first listed C wins."""
    rng = np.random.default_rng(1)
    train_x, train_y = _separable(90, 4, rng)
    test_x, test_y = _separable(60, 4, rng)
    none_train, none_test = np.zeros_like(train_y, bool), np.zeros_like(test_y, bool)
    result = train_test_svms(
        train_x, train_y, none_train, test_x, test_y, none_test, jobs=1, progress=False
    )
    assert result.cv_ap == [1.0] * 4
    assert result.best_cost == [0.01] * 4
    assert result.not_converged == 0  # 4 classes x (4 costs x 3 folds + 1 refit) fits, all done
    for k in range(4):  # the original's procedure, written with cross_val_score
        cost, _ = _original_one_class(train_x, train_y[:, k], test_x, test_y[:, k], none_test[:, k])
        assert cost == 0.01
    descending = train_test_svms(
        train_x, train_y, none_train, test_x, test_y, none_test,
        config=SvmConfig(costs=(10.0, 1.0, 0.1, 0.01)), jobs=1, progress=False,
    )  # fmt: skip
    assert descending.best_cost == [10.0] * 4


def test_difficult_test_images_are_ignored() -> None:
    rng = np.random.default_rng(3)
    train_x, train_y = _separable(60, 2, rng)
    test_x, test_y = _separable(40, 2, rng)
    # Difficult test images: look like positives of class 0 but are not labelled positive.
    test_d = np.zeros_like(test_y, bool)
    hard = np.flatnonzero(test_y[:, 0] > 0)[:3]
    test_d[hard, 0], test_y[hard, 0] = True, 0
    none = np.zeros_like(train_y, bool)
    ignored = train_test_svms(
        train_x, train_y, none, test_x, test_y, test_d, jobs=1, progress=False
    )
    assert ignored.ap[0] == pytest.approx(1.0)
    counted = train_test_svms(
        train_x, train_y, none, test_x, test_y, np.zeros_like(test_d), jobs=1, progress=False
    )
    assert counted.ap[0] < 0.99


def test_excluded_difficult_images_are_left_out_of_training() -> None:
    # train_difficult="exclude" is the same sweep as "negative" on the trainval images without
    # the difficult ones (computed here by removing those rows).
    rng = np.random.default_rng(4)
    train_x, train_y = _separable(60, 2, rng)
    test_x, test_y = _separable(30, 2, rng)
    train_x = train_x + rng.normal(0, 0.4, train_x.shape)  # not separable: the data matter
    difficult = np.zeros_like(train_y, bool)
    difficult[::4, 0] = True
    train_y[difficult] = 0
    none = np.zeros_like(test_y, bool)
    mode = json.loads('"exclude"')  # as the command line passes it: built at run time
    excluded = train_test_svms(
        train_x, train_y, difficult, test_x, test_y, none,
        config=SvmConfig(train_difficult=mode), jobs=1, progress=False,
    )  # fmt: skip
    keep = ~difficult[:, 0]
    subset = train_test_svms(
        train_x[keep], train_y[keep], difficult[keep], test_x, test_y, none, jobs=1,
        progress=False,
    )  # fmt: skip
    # Class 0 (with difficult images) as on the subset; class 1 (none) as on every image.
    assert excluded.ap[0] == subset.ap[0] and excluded.cv_ap[0] == subset.cv_ap[0]
    negative = train_test_svms(
        train_x, train_y, difficult, test_x, test_y, none, jobs=1, progress=False
    )
    assert excluded.ap[1] == negative.ap[1] and excluded.cv_ap[1] == negative.cv_ap[1]
    assert negative.cv_ap[0] != excluded.cv_ap[0]  # the fixture tells the two apart


def test_a_class_without_a_usable_fold_has_nan_cv_ap_and_the_first_cost() -> None:
    # One positive: every 3-fold split leaves it either out of training or out of validation,
    # so no fold gives an AP; the first C is kept and its CV AP is nan (not 0).
    rng = np.random.default_rng(5)
    x = l2_normalize(rng.normal(size=(12, 4)))
    y = np.zeros((12, 1), np.float32)
    y[0, 0] = 1
    none = np.zeros_like(y, bool)
    result = train_test_svms(x, y, none, x, y, none, jobs=1, progress=False)
    assert result.best_cost == [0.01] and math.isnan(result.cv_ap[0])


def test_a_fold_without_both_labels_is_skipped_and_the_others_count() -> None:
    # One negative (image 0): the first fold validates on it, so its training rows are all
    # positive and it is skipped; the other two folds train on both labels and validate on
    # positives only (AP 1.0). The CV AP is their mean, 1.0, not nan.
    rng = np.random.default_rng(6)
    x = l2_normalize(rng.normal(size=(12, 4)))
    y = np.ones((12, 1), np.float32)
    y[0, 0] = 0
    none = np.zeros_like(y, bool)
    result = train_test_svms(x, y, none, x, y, none, jobs=1, progress=False)
    assert result.cv_ap == [1.0] and result.best_cost == [0.01]


def test_voc_style_negative_labels_mean_the_same_as_zero() -> None:
    # The VOC files say -1 for "absent": only labels > 0 are positives, in training and test.
    rng = np.random.default_rng(7)
    train_x, train_y = _separable(60, 2, rng)
    test_x, test_y = _separable(40, 2, rng)
    train_x = train_x + rng.normal(0, 1.0, train_x.shape)
    test_x = test_x + rng.normal(0, 1.0, test_x.shape)
    none_train, none_test = np.zeros_like(train_y, bool), np.zeros_like(test_y, bool)
    zeros = train_test_svms(
        train_x, train_y, none_train, test_x, test_y, none_test, jobs=1, progress=False
    )
    voc = train_test_svms(
        train_x, np.where(train_y > 0, 1, -1), none_train, test_x, np.where(test_y > 0, 1, -1),
        none_test, jobs=1, progress=False,
    )  # fmt: skip
    assert voc.ap == zeros.ap and voc.cv_ap == zeros.cv_ap
    assert all(ap < 0.99 for ap in zeros.ap)  # test AP below 1: the negatives matter


def test_class_without_positives_is_named() -> None:
    x = np.eye(6, dtype=np.float32)
    y = np.zeros((6, 2), np.float32)
    y[:3, 0] = 1
    with pytest.raises(ValueError, match="class 'dog' has 0 positive"):
        train_test_svms(x, y, y > 2, x, y, y > 2, classes=["cat", "dog"], jobs=1, progress=False)
    # With exclude, a class whose only positives are difficult has none left.
    difficult = np.zeros_like(y, bool)
    difficult[:3, 0] = True
    y[3, 1] = y[4, 1] = 1
    with pytest.raises(ValueError, match="class 'cat' has 0 positive"):
        train_test_svms(
            x, y, difficult, x, y, difficult, classes=["cat", "dog"],
            config=SvmConfig(train_difficult="exclude"), jobs=1, progress=False,
        )  # fmt: skip


def test_voc_split_reads_the_devkit_files(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    dataset = voc07_split(tmp_path, "test", probe_transform(32, 36))  # VOCdevkit-style root
    assert len(dataset) == 60 and dataset.labels.shape == (60, 20)
    # Image 0 holds a non-difficult aeroplane and a difficult (0*7+3 = 3) boat.
    assert dataset.labels[0, 0] == 1 and dataset.difficult[0, 3] and dataset.labels[0, 3] == 0
    assert voc.name == "VOC2007"


def test_voc07_command_end_to_end(tmp_path: Path) -> None:
    make_voc(tmp_path)
    out = tmp_path / "result.json"
    args = ["--weights", "random:resnet18", "--voc-root", str(tmp_path / "VOC2007")]
    args += ["--jobs", "2", "--workers", "0", "--device", "cpu", "--quiet"]
    args += ["--image-size", "64", "--resize", "72"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--costs", "0.1,1"]
    result = CliRunner().invoke(voc07_command, args)
    assert result.exit_code == 0, result.output
    assert "| aeroplane |" in result.output and "VOC07 mAP" in result.output
    data = json.loads(out.read_text())
    assert len(data["ap"]) == 20 and set(data["best_cost"]) <= {0.1, 1.0}
    assert data["mAP"] == pytest.approx(np.nanmean(data["ap"]))
    assert data["extra"]["trainval_images"] == 60 and data["extra"]["test_images"] == 60
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_bad_voc_roots_are_named(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    base = ["--weights", "random:resnet18", "--voc-root", str(voc), "--no-cache", "--quiet"]
    base += ["--workers", "0", "--device", "cpu", "--jobs", "1", "--image-size", "32"]
    (voc / "ImageSets" / "Main" / "cat_test.txt").unlink()
    result = CliRunner().invoke(voc07_command, base)
    assert result.exit_code == 1 and "cat_test.txt" in result.output
    make_voc(tmp_path / "second")
    voc = tmp_path / "second" / "VOC2007"
    base[3] = str(voc)
    (voc / "JPEGImages" / "000004.jpg").unlink()
    result = CliRunner().invoke(voc07_command, base)
    assert result.exit_code == 1 and "000004.jpg" in result.output
    listing = voc / "ImageSets" / "Main" / "trainval.txt"
    listing.write_text(listing.read_text() + "009999\n")
    result = CliRunner().invoke(voc07_command, base)
    assert result.exit_code == 1 and "trainval.txt disagrees" in result.output
    result = CliRunner().invoke(voc07_command, [*base[:2], "--voc-root", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "nope" in result.output


def test_commands_explain_themselves() -> None:
    from virtex_eval.cli.features import features_command
    from virtex_eval.cli.linear import linear_command

    for command, words in (
        (voc07_command, "3-fold CV AP"),
        (features_command, "torchrun-aware"),
        (linear_command, "--on-features"),
    ):
        result = CliRunner().invoke(command, ["--help"])
        assert result.exit_code == 0 and words in result.output and "--weights" in result.output
