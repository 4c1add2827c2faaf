"""Checkpoint converters: BERT/MiniLM text weights into the fusion model, OSCAR checkpoints."""

from .oscar import convert_oscar_state_dict, load_oscar_checkpoint
from .bert_init import OFFLINE_MINILM, TextInitReport, init_fusion_from_bert, load_offline_tokenizer, resolve_text_source

__all__ = [
    "convert_oscar_state_dict",
    "load_oscar_checkpoint",
   "OFFLINE_MINILM", "TextInitReport", "init_fusion_from_bert", "load_offline_tokenizer", "resolve_text_source"]
