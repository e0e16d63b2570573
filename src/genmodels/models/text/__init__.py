"""CLIP tokenizer, CLIP text transformer and the SD1/SD2/SDXL text conditioners; BERT WordPiece
tokenizer and the pretrained all-MiniLM-L6-v2 encoder."""

from genmodels.models.text.clip import CLIPTextModel, CLIPTextOutput, load_text_state_dict
from genmodels.models.text.encoders import CLIPEmbedder, TextConditioning, TextEncoder
from genmodels.models.text.minilm import BertModel, MiniLMTextEncoder
from genmodels.models.text.tokenizer import CLIPTokenizer, split_chunks
from genmodels.models.text.wordpiece import WordPieceTokenizer

__all__ = [
    "BertModel",
    "CLIPEmbedder",
    "CLIPTextModel",
    "CLIPTextOutput",
    "CLIPTokenizer",
    "MiniLMTextEncoder",
    "TextConditioning",
    "TextEncoder",
    "WordPieceTokenizer",
    "load_text_state_dict",
    "split_chunks",
]
