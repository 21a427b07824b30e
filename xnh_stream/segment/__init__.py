"""Segmentation of reconstructed XNH volumes: 3-D U-Net affinities, watershed fragments, waterz agglomeration,
blockwise scheduling, CREMI-convention evaluation, random-forest pixel classification and SWC skeletons
(see docs/segmentation.md). Submodules import torch, waterz, kimimaro and scikit-learn lazily where they can;
import what you need from them directly, e.g. ``from xnh_stream.segment.pipeline import segment_volume``."""
