"""Summed log-likelihoods of continuations given a context, batched in packed rows, for the
CD, ND and ED: what rank classification (T0-Eval) and the lm-eval adapter score with.

  scorer    `Request`, `Result` and `Scorer`: requests laid out in packed rows by the
            model's layout family, as a plan of program calls
  programs  the jitted programs, the process's compiled programs, and how a plan is
            compiled (new programs on a pool of threads) and run
  shapes    the arithmetic of batch shapes: buckets, row counts, packing into rows

    from arch_objective.evaluation import scoring
    scorer = scoring.Scorer(model, params, max_tokens=4096)
    results = scorer.score([scoring.Request(prompt, (choice_a, choice_b))], greedy=True)

The packed layouts' constants (`PACKED_ROW_TOKENS`, `PACKED_DECODER_LENGTHS`,
`PACKED_CROSS_ROWS`) are read from `scorer`, the compiled programs from `programs`.
"""
from arch_objective.evaluation.scoring import programs, scorer, shapes
from arch_objective.evaluation.scoring.programs import clear_programs, default_compile_workers
from arch_objective.evaluation.scoring.scorer import (DEFAULT_CROSS_KV_MAX_BYTES,
                                                      DEFAULT_MAX_TOKENS, Request, Result,
                                                      Scorer)
from arch_objective.evaluation.scoring.shapes import (batch_rows, bucket, fine_bucket, pack,
                                                      packed_rows, pow2)

__all__ = ["DEFAULT_CROSS_KV_MAX_BYTES", "DEFAULT_MAX_TOKENS", "Request", "Result", "Scorer",
           "batch_rows", "bucket", "clear_programs", "default_compile_workers",
           "fine_bucket", "pack", "packed_rows", "pow2", "programs", "scorer", "shapes"]
