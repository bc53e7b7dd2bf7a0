"""Offline dataset preparation: TFDS builders that write split noisy pairs as TFRecord shards."""
