"""Pins the public API of the package."""

import iceformer.ops

import iceformer


def test_top_level_api():
    assert sorted(iceformer.__all__) == sorted(
        [
            "__version__",
            "contract",
            "get_library_path",
            "knn_attention_reference",
            "session_options",
            "rewrite",
            "RewriteOptions",
        ]
    )
    for name in iceformer.__all__:
        assert hasattr(iceformer, name), name


def test_ops_api():
    assert sorted(iceformer.ops.__all__) == sorted(
        [
            "contract",
            "get_library_path",
            "session_options",
            "native_contract",
            "simd_variant",
            "simd_tiers",
            "knn_attention_reference",
            "probe_errors_reference",
            "make_knn_attention_model",
            "make_attention_model",
            "make_gqa_model",
        ]
    )


def test_metrics_api():
    import iceformer.metrics

    assert sorted(iceformer.metrics.__all__) == sorted(
        [
            "feeds",
            "nll_sum",
            "logits_stats",
            "perplexity",
            "tokenizer",
            "text_ids",
            "repeat_ids",
            "RetrievalPrompt",
            "passkey_prompt",
            "line_prompt",
            "generated_correct",
            "forced_predictions",
            "forced_correct",
            "answer_token_accuracy",
            "recall_at_k",
            "eligible_rows",
            "relative_error",
            "peak_rss_mib",
        ]
    )
    for name in iceformer.metrics.__all__:
        assert hasattr(iceformer.metrics, name), name


def test_models_api():
    import iceformer.models

    assert sorted(iceformer.models.__all__) == sorted(
        ["ExportError", "export", "export_genai", "export_optimum", "export_smollm2"]
    )
    for name in iceformer.models.__all__:
        assert hasattr(iceformer.models, name), name


def test_library_path_and_session_options():
    path = iceformer.get_library_path()
    assert path.endswith("libiceformer_ops.so")
    so = iceformer.session_options(1)
    assert so.intra_op_num_threads == 1


def test_rewriter_api():
    import iceformer.rewriter

    assert sorted(iceformer.rewriter.__all__) == sorted(
        [
            "rewrite",
            "rewrite_model",
            "RewriteOptions",
            "RewriteReport",
            "RewriteError",
            "AlreadyRewritten",
            "Skip",
            "apply_settings",
            "knn_cores",
            "no_cores",
            "CORE_TYPES",
            "decoder_path",
        ]
    )


def test_batch_api():
    import iceformer.batch

    assert sorted(iceformer.batch.__all__) == sorted(
        [
            "BatchOptions",
            "BatchSummary",
            "BatchError",
            "DocumentError",
            "DocumentScorer",
            "ScoreOptions",
            "Tokenizer",
            "build_spec",
            "inspect",
            "read_input",
            "run_batch",
        ]
    )
