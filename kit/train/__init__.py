"""Fine-tuning: the config file (light, used on login nodes too) and the trainer that runs inside the
fine-tuning image as `python -m kit.train CONFIG` (transformers + peft + bitsandbytes).

Only kit.train.config and the record checks in kit.train.data import light; everything else here is
meant for the job, where the heavy libraries are installed.
"""
