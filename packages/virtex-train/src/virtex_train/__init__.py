"""virtex-train: pretraining VirTex objectives from a laptop CPU to a SLURM GPU cluster."""

__version__ = "0.1.0"

__all__ = ["__version__"]
