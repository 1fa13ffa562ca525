# The head experiment with the Bayesian last layer (Gaussian output weights); all else as softmax.
# train.py's defaults for it: an N(0, 1) prior on each output weight (bayes_prior_std), posterior std 3e-3 at
# init (bayes_init_std: logit noise ~ 3e-3 * |h| ~ 0.03, far below the logit scale), the full ELBO
# CE + KL / (1.0M training tokens) (bayes_kl_weight 1.0), 10 weight draws per prediction (bayes_samples).
include("shakespeare_char_softmax.py")

out_dir = "out-heads/bayes"
head = "bayes"
