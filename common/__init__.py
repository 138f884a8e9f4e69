"""What every layer of the code refers to, TensorFlow-free: the variants and
the configuration (config), the record of a finished training (records),
and files written in one step (files)."""
