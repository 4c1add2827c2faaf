"""MiniVLM model definition files.

These files are self-contained (flat relative imports, third-party imports only from torch,
torchvision, transformers and timm) so that ``save_pretrained`` can copy them into a Hub repository
as remote code and ``trust_remote_code=True`` loading works without ``minivlm_hf`` installed.
"""
