"""Zero-shot classification by caption likelihood."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

import helpers_caption as h

from virtex_eval.captioner import load_captioner
from virtex_eval.cli.zeroshot import zeroshot_command
from virtex_eval.images import ImageFileError
from virtex_eval.zeroshot import ZeroShotClassifier, evaluate, read_image_folders

CAPTIONS = [caption for _, caption in h.SCENES.values()]


def _class_tree(root: Path, extra: int = 0) -> Path:
    """One folder per scene caption (underscores for spaces) holding that scene's image."""
    images = h.write_images(root / "_source")
    for path, caption in zip(images, CAPTIONS, strict=True):
        folder = root / "tree" / caption.replace(" ", "_")
        folder.mkdir(parents=True)
        shutil.copy(path, folder / path.name)
    distractors = ["a_photo_of_a_red_square", "a_photo_of_a_blue_circle"]
    for name in distractors[:extra]:  # distractor classes, each with a copy of the red image
        folder = root / "tree" / name
        folder.mkdir(parents=True)
        shutil.copy(images[0], folder / "copy.png")
    return root / "tree"


def test_forward_scores_equal_the_models_log_likelihood(tmp_path: Path) -> None:
    data, tok = h.trained()
    captioner = load_captioner(data)
    images, _ = h.scene_tensors(h.write_images(tmp_path)[0].parent)
    classifier = ZeroShotClassifier(captioner, ["red square", "blue circles"], "a {}",
                                    direction="forward")  # fmt: skip
    scores = classifier.scores(images)
    objective = captioner.objective
    for c in range(2):
        tokens = classifier.tokens[c : c + 1].repeat(3, 1)
        lengths = classifier.lengths[c : c + 1].repeat(3)
        # The models package's own (full-forward) log-likelihood of the same prompt.
        expected = objective.log_likelihood(images, tokens, lengths)
        assert torch.allclose(scores[:, c], expected, atol=1e-4)


def test_backward_scores_equal_incremental_decoding(tmp_path: Path) -> None:
    data, tok = h.trained()
    captioner = load_captioner(data)
    images, _ = h.scene_tensors(h.write_images(tmp_path)[0].parent)
    classifier = ZeroShotClassifier(
        captioner, ["red square", "tree near a house"], "a {}", direction="backward"
    )
    scores = classifier.scores(images)
    head = captioner.objective.backward_textual
    assert head is not None
    grid = captioner.objective.visual(images)
    for c in range(2):
        length = int(classifier.lengths[c])
        # The prompt read right to left, by hand: [EOS] ... [SOS].
        row = classifier.tokens[c, :length].flip(0)
        assert int(row[0]) == tok.special.eos and int(row[-1]) == tok.special.sos
        # Token by token through the key/value-cached decoding API: another code path.
        state = head.start(grid)
        total = torch.zeros(3)
        for t in range(length - 1):
            logits, state = head.step(state, row[t].repeat(3))
            total += torch.log_softmax(logits.float(), dim=-1)[:, row[t + 1]]
        assert torch.allclose(scores[:, c], total, atol=1e-4)


def test_both_directions_add_and_normalize_divides(tmp_path: Path) -> None:
    data, _ = h.trained()
    captioner = load_captioner(data)
    images, _ = h.scene_tensors(h.write_images(tmp_path)[0].parent)
    names = ["red square", "blue circles in the sky"]
    parts = {
        d: ZeroShotClassifier(captioner, names, "a {}", direction=d).scores(images)
        for d in ("forward", "backward", "both")
    }
    assert torch.allclose(parts["both"], parts["forward"] + parts["backward"], atol=1e-5)
    normalized = ZeroShotClassifier(captioner, names, "a {}", direction="forward", normalize=True)
    predicted = (normalized.lengths - 1).float()
    assert torch.allclose(normalized.scores(images), parts["forward"] / predicted, atol=1e-5)


def test_trained_model_classifies_its_scenes(tmp_path: Path) -> None:
    data, _ = h.trained()
    captioner = load_captioner(data)
    split = read_image_folders(_class_tree(tmp_path))
    assert split.class_names == sorted(CAPTIONS)
    for direction in ("forward", "backward", "both"):
        classifier = ZeroShotClassifier(captioner, split.class_names, "{}", direction=direction)
        result = evaluate(classifier, split, batch_size=2)
        assert result.top1 == 1.0, direction
        assert result.top5 is None  # fewer than 5 classes
        assert result.per_class == dict.fromkeys(split.class_names, 1.0)


def test_top5_with_five_classes(tmp_path: Path) -> None:
    data, _ = h.trained()
    split = read_image_folders(_class_tree(tmp_path, extra=2))
    classifier = ZeroShotClassifier(load_captioner(data), split.class_names, "{}")
    result = evaluate(classifier, split)
    assert result.num_images == 5 and result.top5 == 1.0
    # The distractors' images are the red scene: predicted as its trained caption's class.
    assert result.top1 == pytest.approx(3 / 5)
    red = split.class_names.index(CAPTIONS[0])
    assert result.predictions.count(red) == 3


def test_bad_inputs_are_clear(tmp_path: Path) -> None:
    data, tok = h.trained()
    captioner = load_captioner(data)
    with pytest.raises(ValueError, match="needs a \\{\\}"):
        ZeroShotClassifier(captioner, ["x"], "a photo")
    forward_only = h.model_config("captioning").build(h.vocab_of(tok))
    single = load_captioner(h.checkpoint(forward_only, tok, "captioning"))
    with pytest.raises(ValueError, match="needs a bidirectional"):
        ZeroShotClassifier(single, ["x"], direction="backward")
    assert ZeroShotClassifier(single, ["x"]).direction == "forward"
    with pytest.raises(ValueError, match="at most 16"):
        ZeroShotClassifier(captioner, ["red " * 20])
    tree = _class_tree(tmp_path)
    (tree / "empty_class").mkdir()
    with pytest.raises(ImageFileError, match="empty_class: directory holds no images"):
        read_image_folders(tree)


def test_cli_writes_metrics_and_predictions(tmp_path: Path) -> None:
    data, tok = h.trained()
    torch.save(data, tmp_path / "model.pt")
    tree = _class_tree(tmp_path)
    result = CliRunner().invoke(
        zeroshot_command,
        [
            "--checkpoint", str(tmp_path / "model.pt"), "--images", str(tree), "--prompt", "{}",
            "--output", str(tmp_path / "zs.json"), "--predictions", str(tmp_path / "pred.json"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "top1  1.0000" in result.output
    metrics = json.loads((tmp_path / "zs.json").read_text())
    assert metrics["top1"] == 1.0 and metrics["direction"] == "both" and metrics["prompt"] == "{}"
    predictions = json.loads((tmp_path / "pred.json").read_text())
    assert all(row["label"] == row["predicted"] for row in predictions)
    # A multilabel checkpoint is refused with a clear message.
    model = h.model_config("multilabel_classification").build(h.vocab_of(tok), num_classes=3)
    ckpt = h.checkpoint(model, tok, "multilabel_classification", num_classes=3)
    torch.save(ckpt, tmp_path / "m.pt")
    result = CliRunner().invoke(
        zeroshot_command, ["--checkpoint", str(tmp_path / "m.pt"), "--images", str(tree)]
    )
    assert result.exit_code == 1 and "cannot caption" in result.output


def test_class_chunks_do_not_change_scores(tmp_path: Path) -> None:
    data, _ = h.trained()
    captioner = load_captioner(data)
    images, _ = h.scene_tensors(h.write_images(tmp_path)[0].parent)
    names = ["red square", "blue circles in the sky", "green tree", "house"]
    whole = ZeroShotClassifier(captioner, names, "a {}").scores(images)
    chunked = ZeroShotClassifier(captioner, names, "a {}", class_chunk=3).scores(images)
    assert torch.allclose(whole, chunked, atol=1e-5)
