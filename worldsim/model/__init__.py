"""The world model: camera rays, attention, the chunk-autoregressive DiT and its KV cache."""
