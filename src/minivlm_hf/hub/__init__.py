"""Publishing MiniVLM checkpoints.

- :mod:`.variants`: the published variants and their `hub_configs/<variant>/` files (`python -m minivlm_hf.hub.variants`);
- :mod:`.init_checkpoint`: `minivlm-hf init` (a ready-to-train checkpoint folder from a variant);
- :mod:`.model_card`: model-card templates and rendering;
- :mod:`.push`: `minivlm-hf push` (checks, then one commit to the Hub or any Hub-compatible endpoint).
"""
