# A masked language model (BERT's objective) on Tiny Shakespeare's characters, on a 2-core CPU in about 3 minutes.
# python prepare_data.py shakespeare_char && python train.py config/shakespeare_char_mlm.py
# python evaluate.py --out_dir=out-shakespeare-char-mlm
# python sample.py --out_dir=out-shakespeare-char-mlm --fill "To be, or <mask><mask><mask> to be" --greedy
#
# Bidirectional attention; 15% of the characters chosen, 80% of those shown as <mask>, 10% as a random
# character, 10% unchanged; the loss on the chosen ones only (data.py, mask_tokens). <mask> and <pad> are
# added to the 65 characters: 67 ids.

out_dir = "out-shakespeare-char-mlm"
dataset = "shakespeare_char"
objective = "mlm"

# One speech per row (the text between blank lines), padded to the longest of the batch. 7,224 speeches of
# 154 characters on average; 66% fit in 128, longer ones are cut into pieces of 128 (12,651 pieces in all, 88
# characters on average), so nothing goes unused.
batching = "lines"
block_size = 128
# 16 rows * at most 128 = 2,048 positions a step (~1,400 of them real characters, ~210 chosen for the loss);
# 2,000 steps = ~2.8M characters, about 2.8 passes over the 1.0M training characters
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 2000

# the quickstart's model: 3 layers * 128 wide, 4 heads of 32; 0.6M parameters
n_layer = 3
n_head = 4
n_embd = 128
dropout = 0.0

# half the quickstart's learning rate: only ~15% of the positions give a gradient, so each step is noisier
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 100
lr_decay_iters = 2000  # = max_iters
beta2 = 0.99

eval_interval = 250  # 9 evaluations, each 20 batches per split (~4,200 masked characters)
eval_iters = 20
log_interval = 50
