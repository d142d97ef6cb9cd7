"""DP warm-up stages: releases of noisy statistics before DP-SGD (DP-FETA, FETA-Pro)."""
