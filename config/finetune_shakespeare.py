# Fine-tune OpenAI's GPT-2 (124M) on Tiny Shakespeare in GPT-2 tokens.
#   pip install transformers   # only needed to read the GPT-2 weights
#   python prepare_data.py shakespeare && python train.py config/finetune_shakespeare.py
#   python sample.py --out_dir out-shakespeare-ft --start "ROMEO:"
# Bigger GPT-2s: --init_from=gpt2-medium --n_layer=24 --n_head=16 --n_embd=1024 (the config must state the
# shape, it is what --init_from=resume checks); -large: 36/20/1280; -xl: 48/25/1600.

out_dir = "out-shakespeare-ft"
dataset = "shakespeare"  # 302K train tokens
init_from = "gpt2"
head = "softmax"  # sigmoid or bayes: a fresh head on top of the pretrained body (bayes: mu = GPT-2's matrix)

n_layer = 12
n_head = 12
n_embd = 768
bias = True
dropout = 0.1  # a small dataset: regularise

# 1 sequence x 1024 tokens x 32 micro-steps = 32,768 tokens per step; 20 steps = 655K tokens, ~2 passes
batch_size = 1
block_size = 1024
gradient_accumulation_steps = 32
max_iters = 20

# a pretrained model needs only a small, constant learning rate
learning_rate = 3e-5
decay_lr = False
weight_decay = 0.1

eval_interval = 5
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # keep the checkpoint with the best val loss
