"""CLIP tokenizer, CLIP text transformer and the SD1/SD2/SDXL text conditioners."""

from genmodels.models.text.clip import CLIPTextModel, CLIPTextOutput, load_text_state_dict
from genmodels.models.text.encoders import CLIPEmbedder, TextConditioning, TextEncoder
from genmodels.models.text.tokenizer import CLIPTokenizer, split_chunks

__all__ = [
    "CLIPEmbedder",
    "CLIPTextModel",
    "CLIPTextOutput",
    "CLIPTokenizer",
    "TextConditioning",
    "TextEncoder",
    "load_text_state_dict",
    "split_chunks",
]
