# SPDX-License-Identifier: Apache-2.0
"""HF `config.json`s for dummy-weight engines: each family at its real layer shapes, or tiny.

`write_model_dir(name, path, num_layers=None, tiny=False)` writes a directory vLLM can load with
`load_format="dummy", skip_tokenizer_init=True` (no download). Real shapes follow the public
configs of the named checkpoints; `num_layers` trims depth (per-layer shapes are what matter).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_COMMON = {"torch_dtype": "bfloat16", "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
           "max_position_embeddings": 4096, "rope_theta": 1000000.0, "hidden_act": "silu",
           "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen3-30B-A3B: 48 layers, E=128, k=8
    "qwen3-moe": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "vocab_size": 151936,
    },
    # Mixtral-8x7B: 32 layers, E=8, k=2
    "mixtral": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 32000,
        "sliding_window": None,
    },
    # Qwen1.5-MoE-A2.7B: 24 layers, E=60, k=4, shared expert, no renormalisation
    "qwen2-moe": {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "vocab_size": 151936,
    },
    # DeepSeek-V2-Lite: 27 layers (first dense), E=64, k=6, 2 shared, MLA
    "deepseek-v2-lite": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "vocab_size": 102400,
    },
    # DeepSeek-V3-style routing (sigmoid + correction bias, 8 groups, 4 allowed) at a smaller width
    "deepseek-v3-style": {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "topk_method": "noaux_tc",
        "n_group": 8,
        "topk_group": 4,
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "vocab_size": 129280,
    },
    # GPT-OSS-20B (bf16 dummy weights: no MXFP4, so the router path is used): E=32, k=4
    "gpt-oss": {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "num_hidden_layers": 24,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "num_local_experts": 32,
        "experts_per_token": 4,
        "num_experts_per_tok": 4,
        "sliding_window": 128,
        "vocab_size": 201088,
        "rope_theta": 150000.0,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        "layer_types": ["sliding_attention", "full_attention"] * 12,
        "swiglu_limit": 7.0,
        "attention_bias": True,
    },
    # Llama 4 Scout text MoE: E=16, k=1 sigmoid, shared expert
    "llama4-scout": {
        "architectures": ["Llama4ForCausalLM"],
        "model_type": "llama4_text",
        "hidden_size": 5120,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16384,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_local_experts": 16,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 1,
        "vocab_size": 202048,
        "rope_theta": 500000.0,
        "attention_chunk_size": 8192,
        "use_qk_norm": True,
        "no_rope_layers": [],
        "rope_scaling": None,
        "attn_temperature_tuning": True,
        "floor_scale": 8192,
        "attn_scale": 0.1,
    },
}
for _shape in SHAPES.values():
    for _k, _v in _COMMON.items():
        _shape.setdefault(_k, _v)

# Tiny variants for the CPU tier: same routing semantics, small matrices.
_TINY = {
    "qwen3-moe": {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
                  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "head_dim": 64, "num_experts": 32, "num_experts_per_tok": 4,
                  "vocab_size": 2048},
    "mixtral": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048},
    # Biases on every projection, like the real one (what the gate re-draw must neutralise).
    "gpt-oss": {"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                "vocab_size": 2048, "layer_types": ["sliding_attention", "full_attention"] * 2},
}  # fmt: skip


def config(name: str, num_layers: int | None = None, tiny: bool = False,
           quantization: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The shape's config.json; `quantization` becomes its quantization_config (e.g.
    {"quant_method": "mxfp4"}: vLLM then builds that checkpoint format's layers)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; known: {sorted(SHAPES)}")
    cfg = dict(SHAPES[name])
    if tiny:
        if name not in _TINY:
            raise ValueError(f"no tiny variant of {name!r}; tiny ones: {sorted(_TINY)}")
        cfg.update(_TINY[name])
    if num_layers is not None:
        cfg["num_hidden_layers"] = num_layers
        if "layer_types" in cfg:  # per-layer lists must match the depth
            pattern = cfg["layer_types"]
            cfg["layer_types"] = [pattern[i % len(pattern)] for i in range(num_layers)]
    if quantization is not None:
        cfg["quantization_config"] = dict(quantization)
    return cfg


def write_model_dir(name: str, path: str | Path, num_layers: int | None = None,
                    tiny: bool = False, quantization: dict[str, Any] | None = None) -> Path:  # fmt: skip
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = config(name, num_layers, tiny, quantization)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _word(i: int) -> str:
    """Token id i as a base-62 word: at most 3 characters up to 238,328 ids."""
    out = ""
    while True:
        i, r = divmod(i, 62)
        out = _DIGITS[r] + out
        if i == 0:
            return out


def write_tokenizer(path: str | Path, vocab_size: int) -> Path:
    """A word-level tokenizer with one short word per token id (base 62, space-separated; ids
    0-2 are the special tokens <unk>, <s>, </s>, whose strings no word contains), so vLLM's
    benchmark client can make random prompts of an exact length for a dummy-weight model (decode,
    then encode, gives back the same ids) and the server can detokenize every id the model may
    emit. Words are short on purpose: vLLM's server rejects a prompt of more than 5 characters
    per allowed token before tokenizing it. Written locally; nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {
        **{w: i for i, w in enumerate(specials)},
        **{_word(i): i for i in range(3, vocab_size)},
    }
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>",
        "eos_token": "</s>", "model_max_length": 1 << 20}))  # fmt: skip
    return path
