"""Runnable jobs composing m3w_builder and model: the Ray build, shard inspection, training, the demo."""
