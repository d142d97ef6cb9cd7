"""Empirical privacy audit: membership inference (``membership``) and the one-run canary bound (``canaries``)."""
