# GPT-2 124M on OpenWebText with Muon for the blocks' weight matrices; everything else as config/owt_gpt2.py.
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_muon.py
# NOT measured here (no GPU): the learning rates are carried over from published GPT-2-small runs.
# - modded-nanogpt's 124M speedrun (FineWeb, 8xH100): Muon lr 0.05, momentum 0.95, with Keller Jordan's
#   scaling sqrt(max(1, rows/cols)); Adam (betas 0.8, 0.95) for the rest: embeddings 0.6, head 0.008.
# - nanochat's base training: Muon matrix_lr 0.02; AdamW embedding_lr 0.2, unembedding_lr 0.004.
# Our muon_lr is in AdamW's units (torch's adjust_lr_fn="match_rms_adamw": the step is scaled by
# 0.2 * sqrt(max(rows, cols))). For 768-wide matrices, modded-nanogpt's 0.05 corresponds to 0.0045-0.009
# (mlp.c_proj 768x3072: 0.05 / (0.2 * 55.4); attn.c_proj 768x768: 0.05 / (0.2 * 27.7)); 0.006 sits in between
# and is what worked on the character model here (docs/results.md). The tied embedding/head stays on AdamW at
# nanoGPT's 6e-4: the two recipes untie and raise it, which this config does not.
include("owt_gpt2.py")

out_dir = "out-owt-muon"
optimizer = "muon"
muon_lr = 0.006
muon_momentum = 0.95
muon_weight_decay = 0.0  # both recipes decay the matrices little or not at all
