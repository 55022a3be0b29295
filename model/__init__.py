"""The Flamingo model: Perceiver Resampler, masked tanh-gated cross-attention, HF LM wrapper."""
