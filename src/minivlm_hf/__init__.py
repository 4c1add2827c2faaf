"""minivlm-hf (registration is enabled once the TEE files land)."""
