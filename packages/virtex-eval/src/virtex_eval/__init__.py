"""virtex-eval: captioning metrics, VOC07 SVM, linear probes and detectron2 transfer."""

__version__ = "0.1.0"

__all__ = ["__version__"]
