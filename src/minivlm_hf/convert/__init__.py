"""Checkpoint converters: BERT/MiniLM text weights into the fusion model, OSCAR checkpoints."""

from .bert_init import OFFLINE_MINILM, TextInitReport, init_fusion_from_bert, load_offline_tokenizer, resolve_text_source

__all__ = ["OFFLINE_MINILM", "TextInitReport", "init_fusion_from_bert", "load_offline_tokenizer", "resolve_text_source"]
