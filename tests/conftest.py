"""Test-wide settings: tiny models run fastest (and most predictably) on one intra-op thread."""

import torch

torch.set_num_threads(1)
