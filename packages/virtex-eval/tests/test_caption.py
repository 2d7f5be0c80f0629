"""Captioning with self-contained checkpoints: image loading, checkpoint checks, decoding, CLI."""

from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import virtex_models.precision

sys.path.insert(0, str(Path(__file__).parent))

import helpers_caption as h

from virtex_eval.captioner import DecodeSettings, load_captioner, read_coco_captions
from virtex_eval.cli.caption import caption_command
from virtex_eval.images import (
    ImageFileError,
    eval_transform,
    find_images,
    load_image,
    load_image_tensor,
)
from virtex_eval.spice import SpiceUnavailable, find_spice_jar, spice_score
from virtex_models import Captioning
from virtex_models.precision import resolve_bf16


# ----------------------------------------------------------------------------- images
def test_eval_preprocessing_matches_hand_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)  # 50 wide, 30 high
    Image.fromarray(pixels).save(tmp_path / "x.png")
    tensor = load_image_tensor(tmp_path / "x.png", eval_transform(16))
    # By hand: shorter side 30 -> round(16 / 0.875) = 18 (width 50 * 18 / 30 = 30), centre
    # crop 16 x 16 (offsets 1 and 7), ImageNet mean/std.
    resized = Image.fromarray(pixels).resize((30, 18), Image.Resampling.BILINEAR)
    crop = np.asarray(resized, dtype=np.float32)[1:17, 7:23] / 255.0
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    expected = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1).copy())
    assert tensor.shape == (3, 16, 16)
    # PIL's and torchvision's bilinear filters differ by at most a grey level or two.
    assert torch.allclose(tensor, expected, atol=2.5 / 255 / 0.224)


def test_find_images_searches_folders_and_names_bad_paths(tmp_path: Path) -> None:
    paths = h.write_images(tmp_path / "a" / "b")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert find_images([tmp_path / "a"]) == sorted(paths)
    with pytest.raises(ImageFileError, match="nowhere.jpg: no such file"):
        find_images([tmp_path / "nowhere.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFileError, match="empty: directory holds no images"):
        find_images([tmp_path / "empty"])


def test_bad_image_files_are_named(tmp_path: Path) -> None:
    good = h.write_images(tmp_path)[0]
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "big.jpg", quality=95)
    data = (tmp_path / "big.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    transform = eval_transform(16)
    assert load_image_tensor(good, transform).shape == (3, 16, 16)
    for name, reason in [
        ("truncated.jpg", "corrupt or truncated"),
        ("text.jpg", "not a recognised image"),
        ("empty.png", "empty file"),
        ("missing.png", "no such image file"),
    ]:
        with pytest.raises(ImageFileError, match=f"{name}: {reason}"):
            load_image_tensor(tmp_path / name, transform)
    with pytest.raises(ImageFileError, match="truncated.jpg"):
        load_image(tmp_path / "truncated.jpg")


def test_grayscale_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (20, 20), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"
    # Fully transparent pixels are composited on white.
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


# ----------------------------------------------------------------------------- checkpoints
def test_trained_checkpoint_captions_its_images(tmp_path: Path) -> None:
    data, _ = h.trained()
    torch.save(data, tmp_path / "model.pt")
    captioner = load_captioner(tmp_path / "model.pt")
    assert captioner.image_size == h.IMAGE_SIZE  # read from the embedded experiment YAML
    paths = h.write_images(tmp_path / "images")
    expected = [caption for _, caption in h.SCENES.values()]
    assert captioner.caption_files(paths, DecodeSettings(beam_size=1)) == expected
    assert captioner.caption_files(paths, DecodeSettings(beam_size=3), batch_size=2) == expected
    # The default decoder of the checkpoint (beam 2) too.
    assert captioner.caption_files(paths) == expected


def test_typed_preprocessing_entry_wins_over_the_training_yaml(tmp_path: Path) -> None:
    data, _ = h.trained()
    typed = {
        **data,
        "preprocessing": {
            "image_size": 40,
            "eval_resize": 44,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
        },
    }
    captioner = load_captioner(typed)  # the YAML entry still says h.IMAGE_SIZE
    assert captioner.image_size == 40 and captioner.transform.config.resize_side == 44
    Image.new("RGB", (60, 50), (255, 0, 51)).save(tmp_path / "red.png")
    pixels = captioner.transform.image(load_image(tmp_path / "red.png"))
    # By hand: (255/255 - 0.5) / 0.25 = 2, (0 - 0.5) / 0.25 = -2, (51/255 - 0.5) / 0.25 = -1.2.
    assert pixels.shape == (3, 40, 40)
    expected = torch.tensor([2.0, -2.0, -1.2]).view(3, 1, 1).expand(3, 40, 40)
    assert torch.allclose(pixels, expected, atol=1e-5)
    # Written before the entry existed: the YAML's size and ImageNet normalisation.
    old = load_captioner(data)
    assert old.image_size == h.IMAGE_SIZE and old.transform.config.mean == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match=r"preprocessing.image_size must be a positive int"):
        load_captioner({**data, "preprocessing": {"image_size": "big"}})


def test_nucleus_sampling_is_seeded(tmp_path: Path) -> None:
    data, _ = h.trained()
    captioner = load_captioner(data)
    paths = h.write_images(tmp_path)
    first = captioner.caption_files(paths, DecodeSettings(nucleus=1.0, seed=3))
    again = captioner.caption_files(paths, DecodeSettings(nucleus=1.0, seed=3))
    assert first == again
    # A tiny nucleus keeps only the most likely token: greedy decoding.
    narrow = captioner.caption_files(paths, DecodeSettings(nucleus=1e-6))
    assert narrow == captioner.caption_files(paths, DecodeSettings(beam_size=1))


def test_decode_matches_generate_and_tokenizer(tmp_path: Path) -> None:
    data, tok = h.trained()
    captioner = load_captioner(data)
    images, _ = h.scene_tensors(Path(h.write_images(tmp_path)[0]).parent)
    tokens = captioner.objective.generate(images, mode="greedy", max_steps=12)
    eos = tok.special.eos
    by_hand = [tok.decode(row[: row.index(eos)] if eos in row else row) for row in tokens.tolist()]
    # generate() defaults to an fp32 visual forward; the captioner's "auto" may pick bf16.
    settings = DecodeSettings(beam_size=1, visual_bf16="off")
    assert captioner.caption_tensors(images, settings) == by_hand


def test_non_captioning_checkpoint_is_refused() -> None:
    tok = h.tokenizer()
    model = h.model_config("multilabel_classification").build(h.vocab_of(tok), num_classes=3)
    data = h.checkpoint(model, tok, "multilabel_classification", num_classes=3)
    with pytest.raises(ValueError, match="'multilabel_classification' model, which cannot caption"):
        load_captioner(data)


def test_vocabulary_mismatch_is_refused() -> None:
    data, _ = h.trained()
    other = h.tokenizer()
    from tokenizers import Tokenizer

    from virtex_data.tokenizer import CaptionTokenizer

    # The same specials in a vocabulary of another size.
    inner = Tokenizer.from_str(other._tokenizer.to_str())
    inner.add_tokens(["zebra-crossing-token"])
    bigger = CaptionTokenizer(inner, other.special)
    with pytest.raises(
        ValueError, match="tokenizer has 81 tokens but the model's vocabulary has 80"
    ):
        load_captioner(data, tokenizer=bigger)


def test_missing_tokenizer_and_bad_files_are_named(tmp_path: Path) -> None:
    data, _ = h.trained()
    without = {k: v for k, v in data.items() if k != "tokenizer"}
    with pytest.raises(ValueError, match="no 'tokenizer' entry"):
        load_captioner(without)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a PyTorch checkpoint"):
        load_captioner(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="gone.pt: no such checkpoint"):
        load_captioner(tmp_path / "gone.pt")
    broken = dict(data)
    broken["model"] = {k: v for k, v in data["model"].items() if "output" not in k}
    with pytest.raises(ValueError, match="missing keys"):
        load_captioner(broken)


def test_max_steps_beyond_the_model_is_a_clear_error(tmp_path: Path) -> None:
    data, _ = h.trained()
    captioner = load_captioner(data)
    paths = h.write_images(tmp_path)
    with pytest.raises(ValueError, match="max_steps=40 exceeds the model's 16"):
        captioner.caption_files(paths, DecodeSettings(max_steps=40))
    with pytest.raises(ValueError, match="not both"):
        DecodeSettings(beam_size=2, nucleus=0.9)


# ----------------------------------------------------------------------------- CLI
def _coco_fixture(tmp_path: Path) -> tuple[Path, Path, Path]:
    data, _ = h.trained()
    torch.save(data, tmp_path / "model.pt")
    images = tmp_path / "val"
    h.write_images(images)
    records = {"images": [], "annotations": []}
    for index, (name, (_, caption)) in enumerate(h.SCENES.items()):
        records["images"].append({"id": 100 + index, "file_name": name})
        records["annotations"].append({"id": index, "image_id": 100 + index, "caption": caption})
        records["annotations"].append(
            {"id": 10 + index, "image_id": 100 + index, "caption": "A picture of something."}
        )
        # Capitals and punctuation: scores differ unless the references are PTB-tokenised.
        records["annotations"].append(
            {"id": 20 + index, "image_id": 100 + index, "caption": f"{caption.title()}, far away!"}
        )
    annotations = tmp_path / "captions_val.json"
    annotations.write_text(json.dumps(records))
    return tmp_path / "model.pt", annotations, images


def test_cli_captions_files_and_folders(tmp_path: Path) -> None:
    data, _ = h.trained()
    torch.save(data, tmp_path / "model.pt")
    paths = h.write_images(tmp_path / "photos")
    runner = CliRunner()
    result = runner.invoke(
        caption_command,
        ["--checkpoint", str(tmp_path / "model.pt"), str(paths[0]), "--beam-size", "1"],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{paths[0]}\ta red square on the grass"
    out = tmp_path / "captions.json"
    result = runner.invoke(
        caption_command,
        [
            "--checkpoint",
            str(tmp_path / "model.pt"),
            str(tmp_path / "photos"),
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [r["file"] for r in records] == [str(p) for p in sorted(paths)]
    captions = {Path(r["file"]).name: r["caption"] for r in records}
    assert captions == {name: caption for name, (_, caption) in h.SCENES.items()}


def test_cli_coco_evaluation_writes_results_and_scores(tmp_path: Path) -> None:
    checkpoint, annotations, images = _coco_fixture(tmp_path)
    output = tmp_path / "results.json"
    result = CliRunner().invoke(
        caption_command,
        [
            "--checkpoint", str(checkpoint), "--coco-captions", str(annotations),
            "--images", str(images), "--output", str(output), "--beam-size", "2",
            "--per-image", str(tmp_path / "per_image.json"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads(output.read_text())
    assert results == [
        {"image_id": 100 + i, "caption": caption}
        for i, (_, caption) in enumerate(h.SCENES.values())
    ]
    metrics = json.loads((tmp_path / "results_metrics.json").read_text())
    # The COCO toolkit itself on the same files: its Java PTB tokenizer, then its scorers.
    expected, expected_cider = _toolkit_scores(results, annotations)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert metrics["num_images"] == 3
    assert metrics["decoder"] == {
        "mode": "beam",
        "beam_size": 2,
        "max_steps": 12,
        "visual_bf16": resolve_bf16("auto", "cpu"),  # the command's defaults, resolved
        "decoder_bf16": resolve_bf16("auto", "cpu"),
    }
    assert f"{metrics['CIDEr']:.4f}" in result.output and "BLEU-4" in result.output
    per_image = json.loads((tmp_path / "per_image.json").read_text())
    assert set(per_image) == {"100", "101", "102"}
    for key, value in expected_cider.items():
        assert per_image[str(key)]["CIDEr"] == pytest.approx(value, abs=1e-9), key


def _toolkit_scores(
    results: list[dict[str, Any]], annotations: Path
) -> tuple[dict[str, float], dict[int, float]]:
    """pycocoevalcap's corpus scores and per-image CIDEr-D of ``results`` against the COCO
    captions file, read with ``json`` here (a required reference: its test extra and Java)."""
    if shutil.which("java") is None:
        pytest.fail("java is missing: pycocoevalcap's PTB tokenizer runs on Java", pytrace=False)
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as error:
        pytest.fail(f"pycocoevalcap (virtex-eval's test extra) is missing: {error}", pytrace=False)
    references: dict[int, list[dict[str, str]]] = {}
    for record in json.loads(annotations.read_text())["annotations"]:
        references.setdefault(record["image_id"], []).append({"caption": record["caption"]})
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize(references)
    res = tokenizer.tokenize({r["image_id"]: [{"caption": r["caption"]}] for r in results})
    cider, cider_each = Cider().compute_score(gts, res)
    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    scores = {"CIDEr": cider, "ROUGE-L": rouge}
    scores.update({f"BLEU-{k + 1}": value for k, value in enumerate(bleus)})
    return scores, dict(zip(gts, (float(v) for v in cider_each), strict=True))


def test_cli_coco_limit_and_missing_image(tmp_path: Path) -> None:
    checkpoint, annotations, images = _coco_fixture(tmp_path)
    runner = CliRunner()
    args = ["--checkpoint", str(checkpoint), "--coco-captions", str(annotations)]
    result = runner.invoke(caption_command, [*args, "--images", str(images), "--limit", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(caption_command, [*args, "--images", str(images / "nope")])
    assert result.exit_code == 1 and "nope: no such image folder" in result.output
    (images / "blue.png").unlink()
    strict = [*args, "--images", str(images), "--strict"]
    result = runner.invoke(caption_command, strict)
    assert result.exit_code == 1
    assert "blue.png: image listed in" in result.output and "is missing" in result.output
    (images / "blue.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = runner.invoke(caption_command, strict)
    assert result.exit_code == 1
    assert "blue.png" in result.output and "corrupt" in result.output
    # By default the unreadable image is skipped and listed; the others are scored.
    metrics = tmp_path / "m.json"
    result = runner.invoke(caption_command, [*args, "--images", str(images), "--metrics", metrics])
    assert result.exit_code == 0, result.output
    assert "skipped 1 of 3 image(s) that could not be read:" in result.output
    assert "blue.png: not a recognised image" in result.output
    record = json.loads(metrics.read_text())
    assert record["num_images"] == 2 and record["skipped"][0]["file"].endswith("blue.png")


def test_cli_refuses_bad_combinations_and_other_objectives(tmp_path: Path) -> None:
    tok = h.tokenizer()
    model = h.model_config("multilabel_classification").build(h.vocab_of(tok), num_classes=3)
    torch.save(
        h.checkpoint(model, tok, "multilabel_classification", num_classes=3), tmp_path / "m.pt"
    )
    image = h.write_images(tmp_path)[0]
    runner = CliRunner()
    result = runner.invoke(caption_command, ["--checkpoint", str(tmp_path / "m.pt"), str(image)])
    assert result.exit_code == 1 and "cannot caption" in result.output
    result = runner.invoke(
        caption_command,
        [
            "--checkpoint",
            str(tmp_path / "m.pt"),
            str(image),
            "--beam-size",
            "2",
            "--nucleus",
            "0.9",
        ],
    )
    assert result.exit_code == 1 and "not both" in result.output
    result = runner.invoke(caption_command, ["--checkpoint", str(tmp_path / "m.pt")])
    assert result.exit_code == 2 and "give image files" in result.output


def test_cli_help_shows_examples() -> None:
    result = CliRunner().invoke(caption_command, ["--help"])
    assert result.exit_code == 0
    assert "--coco-captions" in result.output and "virtex-eval caption" in result.output


# ----------------------------------------------------------------------------- SPICE
def test_spice_unavailable_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "spice-1.0.jar").write_bytes(b"")
    monkeypatch.setenv("VIRTEX_SPICE_JAR", str(tmp_path))
    # Without java on PATH: that is what is named.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SpiceUnavailable, match="needs Java"):
        find_spice_jar()
    # With a java, but the jar's lib/ lacks CoreNLP: the missing jars and the variable are named.
    # pycocoevalcap's own SPICE folder is the second place looked in; whether it is complete
    # is decided here from its files, so exactly one outcome is right on this machine.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "java").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    from pycocoevalcap.spice import spice as toolkit

    toolkit_jar = Path(toolkit.__file__).parent / "spice-1.0.jar"
    corenlp = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
    toolkit_complete = toolkit_jar.is_file() and all(
        (toolkit_jar.parent / "lib" / name).is_file() for name in corenlp
    )
    if toolkit_complete:
        assert find_spice_jar() == toolkit_jar
    else:
        with pytest.raises(SpiceUnavailable) as error:
            find_spice_jar()
        assert f"{tmp_path / 'lib'} lacks stanford-corenlp-3.6.0.jar" in str(error.value)
        assert "VIRTEX_SPICE_JAR" in str(error.value)
    # A complete folder named by VIRTEX_SPICE_JAR is used first.
    (tmp_path / "lib").mkdir()
    for name in corenlp:
        (tmp_path / "lib" / name).write_bytes(b"")
    assert find_spice_jar() == tmp_path / "spice-1.0.jar"


def test_spice_runs_the_jar_and_reads_its_output(tmp_path: Path) -> None:
    # A stand-in for `java` that checks the input SPICE gets and writes SPICE's output format.
    fake = tmp_path / "java"
    fake.write_text(
        "#!" + sys.executable + "\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "records = json.load(open(args[3]))\n"
        "out = args[args.index('-out') + 1]\n"
        "scores = [{'image_id': r['image_id'], 'scores': {'All': {'f': 0.5 if r['test'] == "
        "\"a dog 's toy\" else 0.25, 'pr': 0, 're': 0}}} for r in records]\n"
        "json.dump(scores, open(out, 'w'))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    mean, per_image = spice_score(
        {"a": "A dog's toy.", "b": "A cat."},
        {"a": ["a toy"], "b": ["a cat"]},
        jar=tmp_path / "spice-1.0.jar",
        java=str(fake),
    )
    assert per_image == {"a": 0.5, "b": 0.25}
    assert mean == pytest.approx(0.375)


@pytest.mark.slow
def test_benchmark_runs_in_quick_mode() -> None:
    import subprocess

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "eval_caption.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "| greedy |" in result.stdout and "| beam 5 |" in result.stdout


def test_bad_image_is_named_from_a_dataloader_worker(tmp_path: Path) -> None:
    data, _ = h.trained()
    torch.save(data, tmp_path / "model.pt")
    folder = tmp_path / "photos"
    h.write_images(folder)
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["--checkpoint", str(tmp_path / "model.pt"), str(folder), "--workers", "1"]
    result = CliRunner().invoke(caption_command, [*args, "--strict"])
    assert result.exit_code == 1
    assert "zz_broken.jpg" in result.output and "Traceback" not in result.output


def test_caption_skips_unreadable_images_lists_them_and_captions_the_rest(tmp_path: Path) -> None:
    """Issue 16: one corrupt image in a folder no longer stops the command."""
    data, _ = h.trained()
    torch.save(data, tmp_path / "model.pt")
    folder = tmp_path / "photos"
    good = h.write_images(folder)
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    output = tmp_path / "captions.json"
    for workers in ("0", "1"):  # the reasons come back from DataLoader workers too
        args = ["--checkpoint", str(tmp_path / "model.pt"), str(folder), "--output", str(output)]
        result = CliRunner().invoke(caption_command, [*args, "--workers", workers])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert any("skipped 1 of" in line for line in lines)
        assert any(line.strip().startswith(str(folder / "b_broken.jpg")) for line in lines)
        records = {r["file"]: r["caption"] for r in json.loads(output.read_text())}
        # The trained model's captions of the readable images (as without the broken one).
        assert records == {str(folder / n): caption for n, (_, caption) in h.SCENES.items()}
        assert len(good) == len(records)


def test_csv_and_jsonl_references_read_like_coco(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(
        'image,caption\na.png,"a red square, small"\nb.png,two circles\na.png,red\n',
        encoding="utf-8",
    )
    (tmp_path / "c.jsonl").write_text(
        '{"image": "a.png", "caption": "x", "image_id": 7}\n{"image": "b.png", "caption": "y"}\n',
        encoding="utf-8",
    )
    files, references = read_coco_captions(tmp_path / "c.csv")
    assert files == {0: "a.png", 1: "b.png"}
    assert references == {0: ["a red square, small", "red"], 1: ["two circles"]}
    files, references = read_coco_captions(tmp_path / "c.jsonl")
    assert files == {7: "a.png", 1: "b.png"} and references == {7: ["x"], 1: ["y"]}
    (tmp_path / "bad.csv").write_text("image,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.csv:2: needs 'image' and 'caption'"):
        read_coco_captions(tmp_path / "bad.csv")


def test_cli_precision_switches_reach_generate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint, annotations, images = _coco_fixture(tmp_path)
    seen: list[tuple[Any, Any]] = []
    generate = Captioning.generate

    def spy(self: Captioning, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        seen.append((kwargs.get("visual_bf16"), kwargs.get("decoder_bf16")))
        assert isinstance(kwargs.get("decoder_bf16"), bool)  # resolved before generate
        return generate(self, images, **kwargs)

    monkeypatch.setattr(Captioning, "generate", spy)
    # "auto" means on for this test on every CPU (what a native-bf16 CPU resolves it to).
    monkeypatch.setattr(virtex_models.precision, "native_bf16", lambda device: True)
    for flags, expected in (
        ([], ("auto", "auto")),
        (["--visual-bf16", "off", "--decoder-bf16", "off"], ("off", "off")),
        (["--visual-bf16", "on", "--decoder-bf16"], ("on", "on")),  # bare flag: on
    ):
        seen.clear()
        result = CliRunner().invoke(
            caption_command,
            [
                "--checkpoint", str(checkpoint), "--coco-captions", str(annotations),
                "--images", str(images), "--output", str(tmp_path / "out.json"), *flags,
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        decoder = expected[1] != "off"
        assert seen and set(seen) == {(expected[0], decoder)}, flags
        metrics = json.loads((tmp_path / "out_metrics.json").read_text())["decoder"]
        assert metrics["decoder_bf16"] is decoder
        assert metrics["visual_bf16"] is (expected[0] != "off")
    result = CliRunner().invoke(caption_command, ["--checkpoint", str(checkpoint), "x.jpg",
                                                  "--visual-bf16", "yes"])  # fmt: skip
    assert result.exit_code != 0 and "--visual-bf16" in result.output
