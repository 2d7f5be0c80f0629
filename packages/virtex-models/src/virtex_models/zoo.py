"""The original VirTex model zoo: published checkpoints, downloaded, verified and converted.

Each :class:`ZooEntry` names the original config file, the checkpoint URL and the facts of that
config that matter for the architecture (``MODEL.NAME``, visual and textual names); our
:class:`~virtex_models.config.ModelConfig` is derived from them by the legacy importer. The
original configs use the default vocabulary (10000 ids, pad = unk = 0, sos 1, eos 2, mask 3),
captions of at most 30 tokens and beam search with 5 beams. SHA-256 digests of the published
files were not recorded when this manifest was written (``sha256=None``: not checked); pass
``sha256=`` to :func:`load` or fill them in once verified.

Usage::

    from virtex_models import zoo
    model, spec = zoo.load("width_ablations/bicaptioning_R_50_L1_H2048")
    captions = model.generate(images)  # original decoder by default
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


_BOX = "https://umich.box.com/shared/static/"
_H1024 = _BOX + "s2o3tvujcx2djoz1ouvuea27hrys1fbm.pth"
_H2048 = _BOX + "fm1nq819q74vr0kqcd3gkivlzf06xvko.pth"


def _captioning(group: str, stem: str, url: str, visual: str, textual: str) -> ZooEntry:
    name = f"{group}/{stem}"
    model_name = "virtex" if stem.startswith("bicaptioning") else "captioning"
    return ZooEntry(name, f"{name}.yaml", url, model_name, visual, textual)


_R50 = "torchvision::resnet50"
_POST = "transdec_postnorm::"

#: The original's published checkpoints (its model zoo: task, width, depth, backbone ablations).
MANIFEST: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        _captioning(
            "task_ablations",
            "bicaptioning_R_50_L1_H2048",
            _H2048,
            _R50,
            _POST + "L1_H2048_A32_F8192",
        ),
        _captioning(
            "task_ablations",
            "captioning_R_50_L1_H2048",
            _BOX + "7fopt8k2eutz9qvth2hh6j00o7z4o7ps.pth",
            _R50,
            _POST + "L1_H2048_A32_F8192",
        ),
        ZooEntry(
            "task_ablations/token_classification_R_50",
            "task_ablations/token_classification_R_50.yaml",
            _BOX + "qwvfnji51g4gvba7i5mrw2ph5z8yfty9.pth",
            "token_classification",
            _R50,
        ),
        ZooEntry(
            "task_ablations/multilabel_classification_R_50",
            "task_ablations/multilabel_classification_R_50.yaml",
            _BOX + "tk1hlcue9c3268bds3h036ckk7a9btlr.pth",
            "multilabel_classification",
            _R50,
        ),
        _captioning(
            "width_ablations",
            "bicaptioning_R_50_L1_H512",
            _BOX + "qostt3be0pgnd0xf55vdte3wa49x6k99.pth",
            _R50,
            _POST + "L1_H512_A8_F2048",
        ),
        _captioning(
            "width_ablations",
            "bicaptioning_R_50_L1_H768",
            _BOX + "v0p80tya0wjgsj0liqyvt386903xbwxc.pth",
            _R50,
            _POST + "L1_H768_A12_F3072",
        ),
        _captioning(
            "width_ablations",
            "bicaptioning_R_50_L1_H1024",
            _H1024,
            _R50,
            _POST + "L1_H1024_A16_F4096",
        ),
        _captioning(
            "width_ablations",
            "bicaptioning_R_50_L1_H2048",
            _H2048,
            _R50,
            _POST + "L1_H2048_A32_F8192",
        ),
        _captioning(
            "depth_ablations",
            "bicaptioning_R_50_L1_H1024",
            _H1024,
            _R50,
            _POST + "L1_H1024_A16_F4096",
        ),
        _captioning(
            "depth_ablations",
            "bicaptioning_R_50_L2_H1024",
            _BOX + "5enura2ao2b0iyigcuikfsdd0osun0it.pth",
            _R50,
            _POST + "L2_H1024_A16_F4096",
        ),
        _captioning(
            "depth_ablations",
            "bicaptioning_R_50_L3_H1024",
            _BOX + "xit11ev6h3q7h8wth5qokewxcn6yot2n.pth",
            _R50,
            _POST + "L3_H1024_A16_F4096",
        ),
        _captioning(
            "depth_ablations",
            "bicaptioning_R_50_L4_H1024",
            _BOX + "secpwhjx9oq59mkzsztjaews6n3680bj.pth",
            _R50,
            _POST + "L4_H1024_A16_F4096",
        ),
        _captioning(
            "backbone_ablations",
            "bicaptioning_R_50_L1_H1024",
            _H1024,
            _R50,
            _POST + "L1_H1024_A16_F4096",
        ),
        _captioning(
            "backbone_ablations",
            "bicaptioning_R_50W2X_L1_H1024",
            _BOX + "0rlu15xq796tz3ebvz7lf5dbpti421le.pth",
            "torchvision::wide_resnet50_2",
            _POST + "L1_H1024_A16_F4096",
        ),
        _captioning(
            "backbone_ablations",
            "bicaptioning_R_101_L1_H1024",
            _BOX + "i3p45pr78jdz74r29qkj23v8kzb6gcsq.pth",
            "torchvision::resnet101",
            _POST + "L1_H1024_A16_F4096",
        ),
    )
}


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
    filename = name.replace("/", "__") + Path(entry.url).suffix
    path = fetch(entry.url, sha256=sha256 or entry.sha256, cache_dir=cache_dir, filename=filename)
    return load_original_weights(path, entry.spec())
