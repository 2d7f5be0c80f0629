"""The original VirTex model zoo: published checkpoints, downloaded, verified and converted.

The 16 entries are those of the original's v1.x zoo (``virtex/model_zoo/model_zoo.py`` at
v1.4): the checkpoints of the CVPR 2021 paper, on Dropbox at
``https://www.dropbox.com/s/<id>/<config stem>.pth?dl=1``. (The June-2020 v0.9 files on
umich.box.com, which the original superseded, have another layout; they are not listed and
:func:`~virtex_models.legacy.convert_state_dict` refuses them with a message saying so.)

Each :class:`ZooEntry` names the original config file, the checkpoint URL and the facts of that
config that matter for the architecture (``MODEL.NAME``, visual and textual names); our
:class:`~virtex_models.config.ModelConfig` is derived from them by the legacy importer. The
original configs use the default vocabulary (10000 ids, pad = unk = 0, sos 1, eos 2, mask 3),
captions of at most 30 tokens and beam search with 5 beams. The original publishes no SHA-256
digests, so every entry has ``sha256=None`` (not checked); pass ``sha256=`` to :func:`load` to
pin a file you have verified.

Usage::

    from virtex_models import zoo
    model, spec = zoo.load("width_ablations/bicaptioning_R_50_L1_H2048")
    captions = model.generate(images)  # original decoder by default
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from virtex_models.config import ModelConfig
from virtex_models.download import fetch
from virtex_models.legacy import load_original_weights, spec_from_original_config
from virtex_models.pretrained import ModelSpec

__all__ = ["MANIFEST", "ZooEntry", "load"]


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint.

    Attributes:
        name: our name, the original config path without ``.yaml``.
        original_config: the original config file (relative to its ``configs/``).
        url: where the original published the weights.
        model_name: original ``MODEL.NAME``.
        visual: original ``MODEL.VISUAL.NAME``.
        textual: original ``MODEL.TEXTUAL.NAME`` (``none`` for classification).
        sha256: digest of the file, ``None`` when unknown.
    """

    name: str
    original_config: str
    url: str
    model_name: str
    visual: str
    textual: str = "none"
    sha256: str | None = None

    @property
    def config(self) -> ModelConfig:
        """Our architecture for this checkpoint."""
        return self.spec().config

    def spec(self) -> ModelSpec:
        """Our spec for this checkpoint (``num_classes`` filled in when loading)."""
        config = {
            "MODEL": {
                "NAME": self.model_name,
                "VISUAL": {"NAME": self.visual},
                "TEXTUAL": {"NAME": self.textual},
            }
        }
        return spec_from_original_config(config, source=f"zoo entry {self.name}")


#: Where the original (v1.x, the CVPR 2021 paper's checkpoints) published its weights.
URL_FORM = "https://www.dropbox.com/s/{dropbox_id}/{stem}.pth?dl=1"

_R50 = "torchvision::resnet50"
_H2048 = "transdec_postnorm::L1_H2048_A32_F8192"
_H1024 = "transdec_postnorm::L1_H1024_A16_F4096"
#: ``MODEL.NAME`` is what the original's file name starts with (``masked_lm_R_50...``).
_STEM = ""

#: ``(config path without .yaml, Dropbox id, MODEL.NAME, visual, textual)`` of every entry of
#: the original's ``virtex/model_zoo/model_zoo.py`` (v1.4). Three names share one file (the
#: R-50 L1 H1024 model is in the width, depth and backbone ablations) and two another.
_PUBLISHED: tuple[tuple[str, str, str, str, str], ...] = (
    ("task_ablations/bicaptioning_R_50_L1_H2048", "mbeeso8wyieq8wy", "virtex", _R50, _H2048),
    ("task_ablations/captioning_R_50_L1_H2048", "r6zen9k43m5oo58", _STEM, _R50, _H2048),
    ("task_ablations/token_classification_R_50", "o4p9lki505r0mef", _STEM, _R50, "none"),
    ("task_ablations/multilabel_classification_R_50", "hbspp3jv3u8h3bc", _STEM, _R50,
     "none"),
    ("task_ablations/masked_lm_R_50_L1_H2048", "ldzrk6vem4mg6bl", _STEM, _R50, _H2048),
    ("width_ablations/bicaptioning_R_50_L1_H512", "o9fr69jjqfn8a65", "virtex", _R50,
     "transdec_postnorm::L1_H512_A8_F2048"),
    ("width_ablations/bicaptioning_R_50_L1_H768", "1zxglqrrbfufv9d", "virtex", _R50,
     "transdec_postnorm::L1_H768_A12_F3072"),
    ("width_ablations/bicaptioning_R_50_L1_H1024", "pdat4tvhnqxel64", "virtex", _R50, _H1024),
    ("width_ablations/bicaptioning_R_50_L1_H2048", "mbeeso8wyieq8wy", "virtex", _R50, _H2048),
    ("depth_ablations/bicaptioning_R_50_L1_H1024", "pdat4tvhnqxel64", "virtex", _R50, _H1024),
    ("depth_ablations/bicaptioning_R_50_L2_H1024", "ft1vtt4okirzjgo", "virtex", _R50,
     "transdec_postnorm::L2_H1024_A16_F4096"),
    ("depth_ablations/bicaptioning_R_50_L3_H1024", "5ldo1rcsnrshmjr", "virtex", _R50,
     "transdec_postnorm::L3_H1024_A16_F4096"),
    ("depth_ablations/bicaptioning_R_50_L4_H1024", "zgiit2wcluuq3xh", "virtex", _R50,
     "transdec_postnorm::L4_H1024_A16_F4096"),
    ("backbone_ablations/bicaptioning_R_50_L1_H1024", "pdat4tvhnqxel64", "virtex", _R50,
     _H1024),
    ("backbone_ablations/bicaptioning_R_50W2X_L1_H1024", "5o198ux709r6376", "virtex",
     "torchvision::wide_resnet50_2", _H1024),
    ("backbone_ablations/bicaptioning_R_101_L1_H1024", "bb74jubt68cpn80", "virtex",
     "torchvision::resnet101", _H1024),
)  # fmt: skip


def _entry(name: str, dropbox_id: str, model_name: str, visual: str, textual: str) -> ZooEntry:
    stem = name.rsplit("/", 1)[-1]
    model_name = model_name or stem.split("_R_")[0]
    url = URL_FORM.format(dropbox_id=dropbox_id, stem=stem)
    # The original publishes no digests: sha256 stays None (not checked) for every entry.
    return ZooEntry(name, f"{name}.yaml", url, model_name, visual, textual, sha256=None)


#: The original's published checkpoints (its v1.x model zoo: task, width, depth and backbone
#: ablations), named as the original names them (config path without ``.yaml``).
MANIFEST: dict[str, ZooEntry] = {row[0]: _entry(*row) for row in _PUBLISHED}


def load(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    manifest: Mapping[str, ZooEntry] | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Download (once), verify and convert a published original checkpoint.

    Args:
        name: a key of :data:`MANIFEST` (e.g. ``width_ablations/bicaptioning_R_50_L1_H2048``).
        cache_dir: download cache (default: the torch hub cache).
        sha256: expected digest, overriding the entry's.
        manifest: entries to look ``name`` up in (default :data:`MANIFEST`).

    Returns:
        ``(objective, spec)`` in eval mode.
    """
    entries = MANIFEST if manifest is None else manifest
    if name not in entries:
        raise KeyError(f"no zoo entry {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    # Cached under a digest of the whole URL: names sharing a file share its download.
    path = fetch(entry.url, sha256=sha256 or entry.sha256, cache_dir=cache_dir)
    return load_original_weights(path, entry.spec())
