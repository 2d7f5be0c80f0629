"""Model parts that the VirTex detectron2 configs name but detectron2 does not ship."""

from __future__ import annotations

from typing import Any

from virtex_eval.detectron2 import compat

__all__ = ["register_modeling"]


def register_modeling() -> None:
    """Register ``Res5ROIHeadsExtraNorm`` in detectron2's ``ROI_HEADS_REGISTRY`` (idempotent).

    Call in every process that builds models (it applies the compat shims first).
    """
    compat.apply()
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY:
        return

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """C4 ROI head whose ``res5`` stage ends with one more norm layer (``RESNETS.NORM``).

        The MoCo / VirTex Faster R-CNN R50-C4 protocol: with BatchNorm trained (not frozen) in
        the backbone, the box predictor sees normalised ``res5`` features.
        """

        def _build_res5_block(self, cfg: Any) -> tuple[Any, int]:
            stage, out_channels = super()._build_res5_block(cfg)
            stage.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return stage, out_channels

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
