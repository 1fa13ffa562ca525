# The quickstart model with LLaMA's parts instead of GPT-2's: pre-RMSNorm, a SwiGLU MLP, rotary positions (RoPE)
# and no biases; data, sizes and schedule as config/shakespeare_char.py. Val 1.539 against the quickstart's
# 1.572 on the same tokens, ~13% slower a step on a 2-core CPU (docs/results.md, "LLaMA's block against
# GPT-2's on the quickstart budget").
# python train.py config/shakespeare_char_llama.py
include("shakespeare_char_adamw.py")

out_dir = "out-shakespeare-char-llama"
norm = "rmsnorm"
mlp = "swiglu"
pos = "rope"
bias = False
# SwiGLU's hidden width 2/3 * 4 * 128 = 341.3, rounded up to a multiple of 32: 352 (the default 64 would give
# 384 and 7% more parameters than the quickstart, and the comparison would be with a bigger model).
mlp_multiple = 32
# Parameters (wte is tied to lm_head, counted once):
#   per layer: attention 4 * 128^2 = 65,536 + SwiGLU 3 * 128 * 352 = 135,168 + two RMSNorm gains 256 = 200,960
#   3 layers 602,880 + wte 65 * 128 = 8,320 + ln_f 128 = 611,328, all of them counted by num_params (no wpe).
# The quickstart: per layer 65,536 + 131,072 (GELU MLP, 2 * 128 * 512) + 1,664 biases and LayerNorm = 198,272;
#   3 layers 594,816 + wte 8,320 + wpe 64 * 128 = 8,192 + ln_f 256 = 611,584, of which num_params counts 603,392.
