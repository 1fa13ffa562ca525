# GPT-2 124M on OpenWebText with the softmax head: nanoGPT's proven schedule (~300B tokens).
# Planned use, on one node with 8 GPUs:  torchrun --standalone --nproc_per_node=8 train.py config/owt_gpt2.py
# Not in this version yet: torchrun/DDP and `prepare_data.py openwebtext` (the scale-out issue). Today it runs
# on one GPU, the 40 micro-steps of a step one after another, on data/openwebtext/ prepared by you
# (e.g. `prepare_data.py text --input owt_txt/ --name openwebtext --tokenizer gpt2`).

out_dir = "out-owt-gpt2"
dataset = "openwebtext"
head = "softmax"

# 12 sequences x 1024 tokens x 40 micro-steps = 491,520 tokens per optimizer step
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
