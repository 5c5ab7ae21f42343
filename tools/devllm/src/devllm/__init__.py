"""devllm."""
