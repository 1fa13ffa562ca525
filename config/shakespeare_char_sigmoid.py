# The head experiment with the sigmoid head (independent Bernoulli per token, BCE); all else as softmax.
import os
exec(open(os.path.join(os.path.dirname(__file__), "shakespeare_char_softmax.py")).read())

out_dir = "out-heads/sigmoid"
head = "sigmoid"
