"""genmodels: train and sample generative image models (latent diffusion, k-diffusion, VQGAN)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``genmodels.load_pipeline`` without importing the model stack on ``import genmodels``."""
    if name == "load_pipeline":
        from genmodels.pipelines.loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'genmodels' has no attribute {name!r}")
