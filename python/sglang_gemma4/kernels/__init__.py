"""Triton kernels and their fp32 eager references. Imports torch and triton only, never sglang."""
