"""``virtex-eval detectron2``: fine-tune a detectron2 detector from a VirTex backbone."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["detectron2_command"]


@click.command(
    "detectron2",
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="VirTex checkpoint (its backbone is exported) or detectron2 weights: a .pth state "
    "dict (read weights-only), or a model-zoo .pkl (read by a restricted loader that accepts "
    "only numpy arrays and plain containers; other pickles are refused, never run). "
    "Omit for the config's own MODEL.WEIGHTS (random init with the VirTex configs).",
)
@click.option(
    "--d2-config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="detectron2 YAML, e.g. configs/detectron2/coco_segm_default_init_2x.yaml.",
)
@click.option("--output-dir", type=click.Path(path_type=Path), help="Overrides OUTPUT_DIR.")
@click.option("--num-gpus", type=int, default=1, help="Processes (GPUs) on this machine.")
@click.option("--num-machines", type=int, default=1)
@click.option("--machine-rank", type=int, default=0)
@click.option("--dist-url", default="auto", help="tcp://HOST:PORT for multi-machine runs.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT_DIR's last checkpoint.")
@click.option(
    "--eval-only",
    is_flag=True,
    help="Only evaluate: --checkpoint, else the last checkpoint in OUTPUT_DIR.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with coco/, lvis/, VOC2007/, VOC2012/ (sets DETECTRON2_DATASETS).",
)
@click.option(
    "--synth",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Built-in dataset folder (virtex-data synth): virtex_synth_train / virtex_synth_val.",
)
@click.option(
    "--coco",
    "coco",
    nargs=3,
    multiple=True,
    metavar="NAME JSON IMAGES",
    help="Register a COCO-format dataset (repeatable).",
)
@click.argument("opts", nargs=-1, type=click.UNPROCESSED)
def detectron2_command(
    checkpoint: Path | None,
    d2_config: Path,
    output_dir: Path | None,
    num_gpus: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str,
    resume: bool,
    eval_only: bool,
    data_root: Path | None,
    synth: Path | None,
    coco: tuple[tuple[str, str, str], ...],
    opts: tuple[str, ...],
) -> None:
    """Fine-tune (or evaluate) a detectron2 detector initialised with a VirTex backbone.

    OPTS are detectron2 KEY VALUE overrides, e.g. SOLVER.MAX_ITER 1000 SOLVER.IMS_PER_BATCH 8
    (put `--` before them if a value starts with '-'). The config and its _BASE_ files must be
    plain YAML (Python tags and aliases are refused). Metrics go to
    OUTPUT_DIR/metrics_detectron2.json. Needs the detectron2 extra:
    python -m virtex_eval.detectron2.install
    """
    from virtex_eval.detectron2 import detectron2_available

    if not detectron2_available():
        raise click.ClickException(
            "detectron2 is not installed: run `python -m virtex_eval.detectron2.install`"
        )
    from virtex_eval.detectron2.runner import Detectron2Run, run

    try:
        metrics = run(
            Detectron2Run(
                d2_config=d2_config,
                checkpoint=checkpoint,
                opts=list(opts),
                output_dir=output_dir,
                num_gpus=num_gpus,
                num_machines=num_machines,
                machine_rank=machine_rank,
                dist_url=dist_url,
                resume=resume,
                eval_only=eval_only,
                data_root=data_root,
                synth=synth,
                coco=[tuple(c) for c in coco],  # type: ignore[misc]
            )
        )
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(metrics, indent=2))
