"""The web demo (``minivlm-hf serve``): a Gradio app over the task checkpoints of a folder or the Hub.

Needs the ``serve`` extra (``pip install "minivlm-hf[serve]"``); this package imports Gradio only in ``app``.
"""
