"""What one training needs besides the network (lenet.py), below
models_handling: the `precise` statistics rule (precise), the Keras
callbacks a training runs with (callbacks), several devices (devices), and
what makes a step cheap (speed: the compile path, steps per call, the input
pipeline)."""
