"""Checkpoint converters: BERT/MiniLM text weights into the fusion model, OSCAR checkpoints."""

from .._lazy import lazy_attributes

# public name -> submodule that defines it; imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys((
        "convert_oscar_state_dict", "load_oscar_checkpoint",
    ), "oscar"),
    **dict.fromkeys((
        "OFFLINE_MINILM", "TextInitReport", "init_fusion_from_bert", "load_offline_tokenizer",
        "resolve_text_source",
    ), "bert_init"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
