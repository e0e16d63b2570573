"""genmodels: train and sample generative image models (latent diffusion, k-diffusion, VQGAN)."""

__version__ = "0.1.0"
