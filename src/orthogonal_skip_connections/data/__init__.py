"""Datasets: synthetic classification sets (``synthetic``) and image sets (``vision``)."""

from .synthetic import DATASET_TYPES, SyntheticData, make_synthetic

__all__ = ["DATASET_TYPES", "SyntheticData", "make_synthetic"]
