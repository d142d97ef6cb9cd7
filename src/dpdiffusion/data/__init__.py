"""Datasets: images as uint8 tensors [N, C, H, W] with int64 labels, scaled to [-1, 1] by a fixed map."""
