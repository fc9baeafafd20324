# SPDX-License-Identifier: Apache-2.0
"""The embedded default model: a small Qwen3-MoE trained by scripts/train_embedded_model.py.

`MODEL_DIR` holds it (HF format: config.json, model.safetensors, tokenizer.json) once trained;
`corpus.py` is the offline corpus both training and the fidelity harness read.
"""

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"


def available() -> bool:
    return (MODEL_DIR / "config.json").is_file() and (MODEL_DIR / "model.safetensors").is_file()
