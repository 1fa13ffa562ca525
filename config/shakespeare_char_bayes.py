# The head experiment with the Bayesian last layer (Gaussian output weights); all else as softmax.
include("shakespeare_char_softmax.py")

out_dir = "out-heads/bayes"
head = "bayes"
bayes_prior_std = 1.0  # N(0, 1) prior on each output weight
bayes_init_std = 3e-3  # posterior std at init: logit noise ~ 3e-3 * |h| ~ 0.03, far below the logit scale
bayes_kl_weight = 1.0  # the full ELBO: CE + KL / (1.0M training tokens)
bayes_samples = 10
