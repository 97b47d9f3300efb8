"""Helpers the tests share (imported as tests.support.<module>; the repository root is on sys.path through pytest's
`pythonpath` setting in pyproject.toml):

- ops: one-node KnnAttention sessions from an AttentionCase; the bfloat16 P V bound;
- tiny_models: tiny random-weight Hugging Face models and their exports (MODELS, SLIDING: what the rewriter's
  fixtures export);
- corpus: the rewriter's coverage corpus (`python -m tests.support.corpus` prints its table);
- genai_tiny: tiny decoders in onnxruntime-genai's form; genai_check: logits of genai folders against eager exports.
"""
