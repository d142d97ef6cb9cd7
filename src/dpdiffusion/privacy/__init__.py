"""Privacy accounting and the privacy ledger."""

from dpdiffusion.privacy.accounting import (
    ACCOUNTANTS,
    SampledGaussian,
    composed_epsilon,
    epsilon,
    noise_multiplier,
)

__all__ = ["ACCOUNTANTS", "SampledGaussian", "composed_epsilon", "epsilon", "noise_multiplier"]
