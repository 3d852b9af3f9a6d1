"""Training, evaluation, search and export of the follow-me FCN (the only TensorFlow user)."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) hides our own progress output.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
