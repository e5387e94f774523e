"""Names the evaluation commands share, importable without JAX or lm-eval (the command
line's parsers read them)."""
EVAL_T0, EVAL_HARNESS = "eval_t0", "eval_harness"
INFER = "infer"                      # predictions of a checkpoint (`infer.infer`)
DECODES = ("greedy", "sample", "beam")   # infer's decoding methods
BEAM_RULES = ("t5x", "hf")           # beam search's rules (`decoding.BEAM_RULES`)
EAI_EVAL = "eai_eval"                # the paper's 31 lm-eval tasks (`harness.EAI_EVAL`)
HARNESS_BATCH_TOKENS = 16384         # tokens per forward batch (`harness.DEFAULT_BATCH_TOKENS`)
