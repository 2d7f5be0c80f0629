"""``virtex-eval report``: the command line of :mod:`virtex_eval.report`."""

from __future__ import annotations

from pathlib import Path

import click

from virtex_eval.report import write_report


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write (default: RUN_DIR/report.html).",
)
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    help="Folder of the validation images (files named after the image ids).",
)
@click.option("--samples", type=int, default=24, show_default=True, help="Sample cards to show.")
def report_command(run_dir: Path, output: Path | None, images: Path | None, samples: int) -> None:
    """Write one self-contained HTML page about a training run.

    Training curves from RUN_DIR/metrics.jsonl, every metrics JSON found in RUN_DIR (captioning
    scores, ablation.json, VOC07 ...), and the last validation captions from samples.jsonl
    (with images when --images is given). Plots and images are embedded.

    \b
      virtex-eval report runs/bicap_r50 --images data/coco/val2017
    """
    try:
        path = write_report(run_dir, output, images=images, samples=samples)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {path}")
