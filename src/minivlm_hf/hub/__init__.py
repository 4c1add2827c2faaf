"""Publishing MiniVLM checkpoints.

- :mod:`.variants`: the published variants (a table) and the configs each builds;
- :mod:`.hub_configs`: writes their `hub_configs/<variant>/` folders (`python -m minivlm_hf.hub.hub_configs`);
- :mod:`.init_checkpoint`: `minivlm-hf init` (a ready-to-train checkpoint folder from a variant);
- :mod:`.model_card`: model-card templates and rendering;
- :mod:`.push`: `minivlm-hf push` (checks, then one commit to the Hub or any Hub-compatible endpoint).
"""
