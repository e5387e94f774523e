"""Configuration of the arch-objective decoder-only language models (`trust_remote_code`).

One config serves both decoder-only architectures of Wang et al. (2022), "What language
model architecture and pretraining objective work best for zero-shot generalization?":

  non_causal=False  the causal decoder (CD): every position attends to itself and the
                    positions before it.
  non_causal=True   the non-causal (prefix) decoder (ND): the positions of a prefix also
                    attend to each other bidirectionally (see `modeling_arch_objective`).

The network is T5.1.1's decoder without cross-attention: pre-RMSNorm blocks (no mean
subtraction, no bias), unscaled dot-product attention (the 1/sqrt(head_dim) lives in the
query weights), one table of T5 relative-position buckets per layer (unidirectional:
a key after its query shares bucket 0 with distance 0), a gated MLP
(`mlp_activations`, T5.1.1: ('gelu', 'linear') with the tanh approximation of GELU),
a final RMSNorm, and either the tied embedding as output layer with the hidden state
divided by sqrt(d_model) (`logits_via_embedding=True`) or a separate `lm_head`.

Special ids are T5's: pad 0, eos 1. arch-objective's rows start with the decoder start
token 0 (also `bos_token_id`, so `generate()` without a prompt starts from it). With
`prepend_start_token=True` (written by every export since it was added) the model supplies
that token itself: a row whose first token is not 0 reads as if it were preceded by 0, so
plain text ids (a tokenizer's output, lm-eval's `hf` rows) score as arch-objective scores
them; a row that already starts with 0 is taken as it is. Without the field (older
exports) rows are read exactly as given.
"""
from transformers import PretrainedConfig

ACTIVATIONS = ("gelu", "relu", "silu", "linear")


class ArchObjectiveConfig(PretrainedConfig):
  """Hyper-parameters of an arch-objective causal or non-causal decoder.

  vocab_size                       rows of the embedding (v)
  d_model                          width of the residual stream (d)
  num_heads, head_dim              attention heads (h) and their width (e)
  d_ff                             width of the MLP (m)
  num_layers                       transformer blocks
  relative_attention_num_buckets   buckets of each layer's relative-position table
  relative_attention_max_distance  distance from which all keys share the last bucket
  layer_norm_epsilon               RMSNorm epsilon
  mlp_activations                  one activation per input projection `wi_i` (`wi` if
                                   one); their product feeds `wo`. Each of 'gelu' (tanh
                                   approximation), 'relu', 'silu', 'linear'
  logits_via_embedding             True: logits = (h / sqrt(d_model)) @ embedding^T, no
                                   `lm_head` weight; False: logits = `lm_head(h)`
  non_causal                       True for the ND (prefix inputs attend bidirectionally)
  prepend_start_token              True: a forward pass without a key/value cache puts the
                                   start token 0 before every row whose first token (after
                                   left padding) is not 0, and returns the positions of the
                                   given ids only (see `modeling_arch_objective`); False
                                   (the default, and older exports): rows as given
  """
  model_type = "arch_objective_decoder"
  attribute_map = {"hidden_size": "d_model", "num_attention_heads": "num_heads",
                   "num_hidden_layers": "num_layers", "intermediate_size": "d_ff"}

  def __init__(self, vocab_size=32128, d_model=512, num_heads=8, head_dim=64, d_ff=2048,
               num_layers=8, relative_attention_num_buckets=32,
               relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
               mlp_activations=("gelu", "linear"), logits_via_embedding=True,
               non_causal=False, prepend_start_token=False, use_cache=True, pad_token_id=0,
               eos_token_id=1, bos_token_id=0, decoder_start_token_id=0, tie_word_embeddings=False,
               **kwargs):
    for name, value in (("vocab_size", vocab_size), ("d_model", d_model),
                        ("num_heads", num_heads), ("head_dim", head_dim), ("d_ff", d_ff),
                        ("num_layers", num_layers),
                        ("relative_attention_num_buckets", relative_attention_num_buckets),
                        ("relative_attention_max_distance", relative_attention_max_distance)):
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ArchObjectiveConfig.{name} must be a positive int, found {value!r}.")
    if isinstance(mlp_activations, str):
      mlp_activations = (mlp_activations,)
    mlp_activations = list(mlp_activations)
    unknown = [a for a in mlp_activations if a not in ACTIVATIONS]
    if not mlp_activations or unknown:
      raise ValueError(f"ArchObjectiveConfig.mlp_activations must be a non-empty list of "
                       f"{list(ACTIVATIONS)}, found {mlp_activations!r}.")
    if not isinstance(prepend_start_token, bool):
      raise ValueError(f"ArchObjectiveConfig.prepend_start_token must be true or false, found "
                       f"{prepend_start_token!r}.")
    if tie_word_embeddings:
      raise ValueError("ArchObjectiveConfig.tie_word_embeddings must be false: a tied output "
                       "layer is `logits_via_embedding=true` (the embedding itself, with the "
                       "1/sqrt(d_model) scaling), which has no separate weight to tie.")
    self.vocab_size = vocab_size
    self.d_model = d_model
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.d_ff = d_ff
    self.num_layers = num_layers
    self.relative_attention_num_buckets = relative_attention_num_buckets
    self.relative_attention_max_distance = relative_attention_max_distance
    self.layer_norm_epsilon = float(layer_norm_epsilon)
    self.mlp_activations = mlp_activations
    self.logits_via_embedding = bool(logits_via_embedding)
    self.non_causal = bool(non_causal)
    self.prepend_start_token = bool(prepend_start_token)
    self.use_cache = use_cache
    super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                     bos_token_id=bos_token_id, decoder_start_token_id=decoder_start_token_id,
                     **kwargs)
    self.tie_word_embeddings = False
