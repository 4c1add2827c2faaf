"""MiniVLM model definition files.

These files are self-contained (flat relative imports, third-party imports only from torch,
torchvision, transformers and timm) so that ``save_pretrained`` can copy them into a Hub repository
as remote code and ``trust_remote_code=True`` loading works without ``minivlm_hf`` installed.

This ``__init__`` is not part of the remote code. It imports transformers before any model file runs: that first
import is when ``minivlm_hf`` registers its Auto classes (importing every model file), which must not happen while a
model file is half-way through its own imports.
"""

import transformers  # noqa: F401
