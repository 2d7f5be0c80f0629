"""A picture of the quickstart's greedy captions: val images of the built-in dataset, each with
the caption the model wrote and the scene's facts (largest object, number of objects).

Run after the quickstart, from the directory it ran in:

    virtex-train pretrain --output-dir runs/quickstart
    python demo/quickstart_figure.py --run runs/quickstart --data data/synth \\
        --output demo/results/quickstart_captions.png

The figure in the top-level README was made this way (the images are the first val images by
id, not chosen).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from PIL import Image, ImageDraw, ImageFont

from virtex_data.synth_grounding import grounding
from virtex_train.config import load_config
from virtex_train.quickstart import greedy_val_captions

TILE = 192  # pixels per image (the 64 px images are scaled up, nearest neighbour)
TEXT = 74  # pixels of text under each image


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if len(candidate) > width and line:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


@click.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--images", default=8, show_default=True, help="Images in the figure (4 a row).")
def main(run_dir: Path, data_dir: Path, output: Path, images: int) -> None:
    """Draw the first IMAGES val images with their greedy captions into OUTPUT (PNG)."""
    config = load_config(str(run_dir / "config.yaml"), [])
    captions = greedy_val_captions(run_dir / "checkpoints" / "final.pt", config.data)
    if captions is None:
        raise click.ClickException(f"{run_dir}: the objective does not caption")
    notes = data_dir / "annotations"
    records = json.loads((notes / "attributes_val.json").read_text())["images"]
    files = {
        int(image["id"]): data_dir / "val" / image["file_name"]
        for image in json.loads((notes / "captions_val.json").read_text())["images"]
    }
    by_id = {int(record["image_id"]): record for record in records}
    chosen = sorted(captions)[:images]
    columns = 4
    rows = (len(chosen) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + TEXT)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, image_id in enumerate(chosen):
        x, y = (k % columns) * TILE, (k // columns) * (TILE + TEXT)
        picture = Image.open(files[image_id]).convert("RGB")
        sheet.paste(picture.resize((TILE - 8, TILE - 8), Image.Resampling.NEAREST), (x + 4, y + 4))
        record = by_id[image_id]
        count = int(record["num_objects"])
        facts = (
            f"[{count} object{'s' if count != 1 else ''}; largest {record['largest_colour']} "
            f"{record['largest_shape']}]"
        )
        lines = _wrap(captions[image_id], 30)[:3] + [facts]
        for n, line in enumerate(lines):
            fill = (90, 90, 90) if line is facts else (0, 0, 0)
            draw.text((x + 6, y + TILE + 2 + 17 * n), line, fill=fill, font=font)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    summary = grounding(captions, records).summary()
    click.echo(f"{output}: {len(chosen)} images\n{summary}")


if __name__ == "__main__":
    main()
