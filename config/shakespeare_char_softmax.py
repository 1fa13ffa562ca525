# The output-head experiment (README, "Output heads"): the quickstart's model and data on a shorter schedule.
# The sigmoid and bayes configs run this file and change only `head` (ngram: the sigmoid head on sets of
# right answers); compare with evaluate.py:
#   for h in softmax sigmoid bayes ngram; do for s in 1 2 3; do
#     python train.py config/shakespeare_char_$h.py --seed=$s --out_dir=out-heads/$h-$s
#     python evaluate.py --out_dir=out-heads/$h-$s --set_k=4; done; done
#   python evaluate.py --compare out-heads/*

out_dir = "out-heads/softmax"
dataset = "shakespeare_char"
head = "softmax"

batch_size = 24
block_size = 64
gradient_accumulation_steps = 1
max_iters = 2000  # 3.1M tokens, ~2.5 minutes on 2 cores
lr_decay_iters = 2000

n_layer = 3
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 6e-3
min_lr = 3e-4
warmup_iters = 50
beta2 = 0.99

eval_interval = 250
eval_iters = 27
log_interval = 50
