# The seed-LLaMA setup (shakespeare_char_seed_llama.py) on a leaky split: every 32-character window of the
# whole text, 10% of them held out at random (data.window_split), as a random split of a dataset of
# overlapping windows does. Its val loss is what such a split reports; docs/robustness.md ("The seed's 1.02")
# sets it beside the standard split's. Not a way to measure anything else.
# python train.py config/shakespeare_char_seed_llama_leaky.py
include("shakespeare_char_seed_llama.py")

out_dir = "out-shakespeare-char-seed-llama-leaky"
split_by = "windows"
