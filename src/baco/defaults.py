"""Engine defaults that the command line shows in its help, kept free of torch so `baco --help` stays fast."""

# `max_batch="auto"`: how much of the device's memory an engine may fill (vLLM's gpu_memory_utilization), and the
# most slots it makes (vLLM's max_num_seqs)
MEMORY_FRACTION = 0.9
AUTO_MAX_BATCH = 256
# the most prompt positions (rows x columns, left padding included) one prefill forward holds (vLLM's
# max_num_batched_tokens for its chunked prefill): a step that also prefills costs the live rows at most this much
PREFILL_TOKENS = 8192
# the embedding model's dtypes (`baco eval --embedding-dtype`, a sweep's `evaluation.embedding_dtype`)
EMBEDDING_DTYPES = ("auto", "float32", "bfloat16", "float16")
