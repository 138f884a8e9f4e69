"""What surrounds a training, each module one concern:

- config: the one configuration object, and the names the command line may choose from;
- flags: argparse types with bounds, and a parser whose errors fit on one line;
- precise: the `precise` statistics rule (what fills BN's window, and when);
- callbacks: the other Keras callbacks a training runs with;
- executor: where trainings run (this process, or Dask workers);
- results_folder: what a run writes and reads back;
- files: one-step writes and the lock;
- devices: several devices with tf.distribute;
- compile_path: `--jit_compile measure`, XLA or TensorFlow's kernels, timed.
"""
