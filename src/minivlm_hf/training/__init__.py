"""minivlm_hf.training"""
