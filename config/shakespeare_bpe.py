# A GPT on Tiny Shakespeare in BPE tokens from a tokenizer trained here (tokenizer.py), on a 2-core CPU.
# python prepare_data.py shakespeare --tokenizer bpe --vocab_size 4096 && python train.py config/shakespeare_bpe.py
#
# 4,096 tokens of ~3.6 characters each: the training split is only 278K tokens, which this run sees about 11
# times, so some dropout. With 4,096 outputs the output layer is most of the compute (a 3-layer model runs at
# about the speed of the char model's with 4 layers); 3 layers matched 4 layers at equal time
# (docs/results.md, "Tiny Shakespeare in BPE tokens").

out_dir = "out-shakespeare-bpe"
dataset = "shakespeare_bpe"

batch_size = 24
block_size = 64  # 64 tokens ~ 230 characters of context
gradient_accumulation_steps = 1
max_iters = 2000

n_layer = 3
n_head = 4
n_embd = 128
dropout = 0.1

learning_rate = 6e-3
min_lr = 3e-4
warmup_iters = 50
lr_decay_iters = 2000  # = max_iters
beta2 = 0.99

eval_interval = 200
eval_iters = 20
log_interval = 50
