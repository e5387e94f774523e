"""Hugging Face `trust_remote_code` files of the decoder-only models (CD and ND).

`configuration_arch_objective.py` and `modeling_arch_objective.py` are copied verbatim
into every export by `arch_objective.convert.hf_decoder.export_decoder_only`; they import
only torch and transformers, so an export loads without this package installed:

  transformers.AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
  transformers.AutoModelForSeq2SeqLM.from_pretrained(out_dir, trust_remote_code=True)
"""
import pathlib

CODE_DIR = pathlib.Path(__file__).resolve().parent
CONFIG_MODULE = "configuration_arch_objective"
MODELING_MODULE = "modeling_arch_objective"
CODE_FILES = (f"{CONFIG_MODULE}.py", f"{MODELING_MODULE}.py")
