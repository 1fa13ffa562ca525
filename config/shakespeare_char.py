# A character-level GPT on Tiny Shakespeare, tuned for the lowest val loss per second of a 2-core CPU.
# python prepare_data.py shakespeare_char && python train.py config/shakespeare_char.py
#
# What mattered on a CPU (measured: docs/results.md, the quickstart): many small optimizer steps beat few large
# ones, and a small model that takes them quickly beats a larger one. Every setting below was compared at equal
# wall time.

out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"

# 24 batch * 64 block = 1,536 tokens per step; 4,200 steps = 6.5M tokens, about 6.4 passes over the 1.0M
# training characters. A context of 64 characters learns faster per second than 128 or 256 here.
batch_size = 24
block_size = 64
gradient_accumulation_steps = 1
max_iters = 4200

# 3 layers * 128 wide, 4 heads of 32: 0.60M parameters, 6 * 0.60M = 3.6 MFLOP per token for training
n_layer = 3
n_head = 4
n_embd = 128
dropout = 0.0  # ~6 epochs in 5 minutes: too little time to overfit much, and dropout slows learning

# a tiny model takes a high learning rate; cosine decay to min_lr over the whole run
learning_rate = 6e-3
min_lr = 3e-4
warmup_iters = 50
lr_decay_iters = 4200  # = max_iters
beta2 = 0.99  # few tokens per step: average the squared gradients over more steps

eval_interval = 300  # 15 evaluations in the run, each 27 batches = 41K tokens per split
eval_iters = 27
log_interval = 50
