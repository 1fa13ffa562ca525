# GPT-2 124M on OpenWebText with a Bayesian last layer; everything else as config/owt_gpt2.py.
#   torchrun --standalone --nproc_per_node=8 train.py config/owt_bayes.py
include("owt_gpt2.py")

out_dir = "out-owt-bayes"
head = "bayes"
bayes_prior_std = 1.0
bayes_init_std = 3e-3  # logit noise at init ~ 3e-3 * |h| ~ 0.08 with n_embd 768: well under the logit scale
bayes_kl_weight = 1.0  # KL / (~9B training tokens): a light touch at this scale
bayes_samples = 10
