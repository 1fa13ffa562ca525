# A character-level GPT on Tiny Shakespeare, tuned for the lowest val loss within 5 minutes of a 2-core CPU.
# python prepare_data.py shakespeare_char && python train.py config/shakespeare_char.py
#
# What mattered on a CPU (measured: docs/results.md, the quickstart): many small optimizer steps beat few large
# ones, a small model that takes them quickly beats a larger one, and Muon beats AdamW for the matrices. Every
# setting below was compared at equal wall time.

out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"

# 24 batch * 64 block = 1,536 tokens per step; 3,800 steps = 5.8M tokens, about 5.8 passes over the 1.0M
# training characters. A context of 64 characters learns faster per second than 128 or 256 here.
batch_size = 24
block_size = 64
gradient_accumulation_steps = 1
max_iters = 3800

# 3 layers * 128 wide, 4 heads of 32: 0.60M parameters, 6 * 0.60M = 3.6 MFLOP per token for training
n_layer = 3
n_head = 4
n_embd = 128
dropout = 0.0  # ~6 epochs in 5 minutes: dropout 0.1 cost more in speed of learning than it saved (1.59 vs 1.52)

# Muon for the 12 block matrices (~10% more time a step than AdamW, so 3,800 steps instead of 4,200 in the
# same time); AdamW for the embedding, norms and biases. Both on one cosine schedule to min_lr.
optimizer = "muon"
muon_lr = 0.006  # in AdamW's units; 0.012 was no better (1.520 vs 1.516)
learning_rate = 6e-3  # AdamW's: a tiny model takes a high learning rate
min_lr = 3e-4
warmup_iters = 50
lr_decay_iters = 3800  # = max_iters
beta2 = 0.99  # few tokens per step: average the squared gradients over more steps

eval_interval = 300  # 13 evaluations in the run, each 27 batches = 41K tokens per split
eval_iters = 27
log_interval = 50
