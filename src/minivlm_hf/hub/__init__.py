"""minivlm_hf.hub"""
