"""vlutils: vision inputs for Qwen2-VL-family models, a drop-in for qwen-vl-utils 0.0.14."""
