"""vlmodel: a compact reference Qwen2-VL / Qwen2.5-VL in plain PyTorch."""
