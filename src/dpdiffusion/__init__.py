"""dpdiffusion: differentially private diffusion models and synthetic image release."""

__version__ = "0.1.0"
