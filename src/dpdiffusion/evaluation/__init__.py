"""Evaluation of synthetic images: FID and precision/recall on Inception features, downstream classifiers
trained on synthetic data and tested on real data, and the report that brings them together."""
