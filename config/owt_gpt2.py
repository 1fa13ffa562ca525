# GPT-2 124M on OpenWebText with the softmax head: nanoGPT's proven schedule (~300B tokens).
#   python prepare_data.py openwebtext --num_proc 8      # ~9B train tokens in data/openwebtext/ (uint16)
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_gpt2.py
# On fewer GPUs the same config works: each of N processes runs 40 / N micro-steps (N must divide 40),
# so tokens per step and the schedule stay the same and only the wall time changes.

out_dir = "out-owt-gpt2"
dataset = "openwebtext"
head = "softmax"

# 12 sequences x 1024 tokens x 40 micro-steps = 491,520 tokens per optimizer step (8 GPUs: 5 micro-steps each);
# 600,000 steps x 491,520 = 295B tokens
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 40

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True

learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10
compile = True
