"""Retrieval by caption likelihood: batched scores, recall/rank metrics, the command."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

import helpers_caption as h

from virtex_eval.captioner import load_captioner
from virtex_eval.cli import main
from virtex_eval.retrieval import LikelihoodScorer, read_caption_set, retrieval_metrics

CAPTIONS = [caption for _, caption in h.SCENES.values()] + [
    "a red square",
    # 17 words + [SOS]/[EOS] > max_length 16: truncated, keeping [EOS].
    "a red square on the grass and two blue circles in the sky near a green tree",
]


def _brute_force(objective, tok, image: torch.Tensor, caption: str, head: str, mean: bool) -> float:
    """log p(caption | image) for one pair, summed by hand from a full forward pass."""
    s = tok.special
    row = [s.sos, *tok.encode(caption), s.eos]
    limit = objective.textual.max_length
    if len(row) > limit:
        row = row[: limit - 1] + [s.eos]
    if head == "backward":
        row = row[::-1]  # [EOS] wn ... w1 [SOS]
    tokens = torch.tensor([row])
    lengths = torch.tensor([len(row)])
    decoder = objective.textual if head == "forward" else objective.backward_textual
    with torch.no_grad():
        logits = decoder(objective.visual(image[None]), tokens, lengths)[0]
    total = 0.0
    for t in range(len(row) - 1):
        total += float(torch.log_softmax(logits[t].double(), dim=0)[row[t + 1]])
    return total / (len(row) - 1) if mean else total


@pytest.mark.parametrize("pair_batch", [1, 4, 7, 1000])
@pytest.mark.parametrize(("direction", "normalize"), [("both", "sum"), ("backward", "mean")])
def test_batched_scores_equal_per_pair_computation(
    tmp_path: Path, pair_batch: int, direction: str, normalize: str
) -> None:
    data, tok = h.trained()
    captioner = load_captioner(data)
    images, _ = h.scene_tensors(h.write_images(tmp_path)[0].parent)
    scorer = LikelihoodScorer(
        captioner, direction=direction, normalize=normalize, pair_batch=pair_batch
    )
    scores = scorer.score_matrix(scorer.image_memory(images), CAPTIONS)
    objective = captioner.objective
    heads = ["forward", "backward"] if direction == "both" else [direction]
    expected = torch.tensor(
        [
            [
                sum(_brute_force(objective, tok, image, c, hd, normalize == "mean") for hd in heads)
                for c in CAPTIONS
            ]
            for image in images
        ]
    )
    assert scores.shape == (3, len(CAPTIONS))
    # float32 log-softmax over an 80-word vocabulary, summed over <= 15 tokens and 2 heads.
    assert torch.allclose(scores, expected.float(), rtol=1e-5, atol=1e-4), (scores, expected)


def test_recall_and_rank_against_a_hand_worked_matrix() -> None:
    # Captions 0, 1 describe image 0; caption 2 image 1; caption 3 image 2.
    scores = torch.tensor(
        [
            [5.0, 1.0, 4.0, 2.0],  # best own 5: nothing else >= 5 -> rank 1
            [3.0, 0.0, 2.0, 6.0],  # own 2: captions 0 (3) and 3 (6) above -> rank 3
            [1.0, 1.0, 1.0, 1.0],  # own 1: three ties count against -> rank 4
        ]
    )
    metrics = retrieval_metrics(scores, [0, 0, 1, 2])
    i2t = metrics["image_to_text"]  # ranks 1, 3, 4
    assert i2t["R@1"] == pytest.approx(1 / 3)
    assert i2t["R@5"] == 1.0 and i2t["R@10"] == 1.0
    assert i2t["mean_rank"] == pytest.approx(8 / 3)
    assert i2t["median_rank"] == 3.0
    # Columns: caption 0 (5 | 3, 1) -> 1; caption 1 (1 | 0, 1 tie) -> 2;
    # caption 2 (2 | 4, 1) -> 2; caption 3 (1 | 2, 6) -> 3.
    t2i = metrics["text_to_image"]
    assert t2i["R@1"] == pytest.approx(1 / 4)
    assert t2i["R@5"] == 1.0
    assert t2i["mean_rank"] == pytest.approx(2.0)
    assert metrics["num_images"] == 3 and metrics["num_captions"] == 4


def _caption_csv(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    h.write_images(folder)
    path = tmp_path / "captions.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for name, (_, caption) in h.SCENES.items():
            writer.writerow([name, caption])
    return path, folder


def test_command_refuses_more_pairs_than_max_pairs_before_loading(tmp_path: Path) -> None:
    captions, folder = _caption_csv(tmp_path)
    result = CliRunner().invoke(
        main,
        ["retrieval", "--checkpoint", str(tmp_path / "missing.pt"), "--captions", str(captions),
         "--images", str(folder), "--max-pairs", "8", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "3 images x 3 captions = 9 pairs" in result.output
    assert "--max-pairs 8" in result.output


def test_command_retrieves_the_trained_scenes(tmp_path: Path) -> None:
    data, _ = h.trained()
    torch.save(data, tmp_path / "model.pt")
    captions, folder = _caption_csv(tmp_path)
    output = tmp_path / "out" / "retrieval.json"
    result = CliRunner().invoke(
        main,
        ["retrieval", "--checkpoint", str(tmp_path / "model.pt"), "--captions", str(captions),
         "--images", str(folder), "--normalize", "mean", "--output", str(output),
         "--device", "cpu", "--max-pairs", "9"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(output.read_text())
    # The model was overfitted to one caption per scene: each finds its own (chance R@1 = 1/3).
    assert record["image_to_text"]["R@1"] == 1.0
    assert record["text_to_image"]["R@1"] == 1.0
    assert record["direction"] == "both" and record["normalize"] == "mean"
    assert record["num_images"] == 3 and record["num_captions"] == 3


def test_caption_set_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "../x.png", "caption": "a cat"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="c.jsonl.*not inside the image folder"):
        read_caption_set(path, tmp_path)


@pytest.mark.slow
def test_model_trained_on_builtin_data_retrieves_far_above_chance(tmp_path: Path) -> None:
    """A small captioner (ResNet-18, 32 px, 1 x 64 head, 450 Adam steps, ~2 min on one CPU
    core) trained on 256 built-in training images retrieves the 32 validation images (5
    captions each) far above chance: measured text-to-image R@5 0.62 and image-to-text R@5
    0.53, where chance is 5/32 = 0.16 and 1 - C(155, 5) / C(160, 5) = 0.15."""
    import random

    from virtex_data.synth import generate
    from virtex_data.tokenizer import CaptionTokenizer
    from virtex_eval.captioner import Captioner
    from virtex_eval.images import eval_transform, load_image_tensor
    from virtex_models import ModelConfig

    generate(tmp_path, train=256, val=32, size=32, seed=0, workers=1, progress=False)
    annotations = json.loads((tmp_path / "annotations" / "captions_train.json").read_text())
    names = {image["id"]: image["file_name"] for image in annotations["images"]}
    captions: dict[int, list[str]] = {}
    for annotation in annotations["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    tok = CaptionTokenizer.train([c for cs in captions.values() for c in cs], vocab_size=300)
    transform = eval_transform(32)
    ids = sorted(captions)
    images = torch.stack([load_image_tensor(tmp_path / "train" / names[i], transform) for i in ids])
    config = ModelConfig.from_dict(
        {
            "kind": "captioning",
            "visual": {"kind": "torchvision", "name": "resnet18"},
            "textual": {"layers": 1, "width": 64, "heads": 2, "ffn": 128, "dropout": 0.0},
            "decoder": {"mode": "greedy", "max_steps": 20},
        }
    )
    torch.manual_seed(0)
    rng = random.Random(0)
    objective = config.build(h.vocab_of(tok)).train()
    optimizer = torch.optim.Adam(objective.parameters(), lr=2e-3)
    for _ in range(450):
        chosen = rng.sample(range(len(ids)), 32)
        tokens, lengths = h.encode(tok, [rng.choice(captions[ids[i]]) for i in chosen])
        optimizer.zero_grad()
        objective(h.Batch(torch.tensor(chosen), images[chosen], tokens, lengths)).loss.backward()
        optimizer.step()
    caption_set = read_caption_set(tmp_path / "annotations" / "captions_val.json", tmp_path / "val")
    scorer = LikelihoodScorer(Captioner(objective.eval(), tok, transform), normalize="mean")
    scores = scorer.score_files(caption_set.paths, caption_set.captions)
    metrics = retrieval_metrics(scores, caption_set.image_of)
    assert metrics["num_images"] == 32 and metrics["num_captions"] == 160
    assert metrics["text_to_image"]["R@5"] >= 0.4, metrics
    assert metrics["image_to_text"]["R@5"] >= 0.35, metrics
