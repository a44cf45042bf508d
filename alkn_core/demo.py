"""Demo corpus and tiny demo model (re-exports; see demo_corpus.py and demo_model.py).

Rebuild the committed demo assets with::

    python -m alkn_core.demo build --out alkn_core/demo_assets
"""

from __future__ import annotations

import sys

from .demo_corpus import (
    SPLIT_FILES,
    Corpus,
    generate_corpus,
    n_forget_people,
    read_corpus,
    read_jsonl,
    training_items,
    write_corpus,
    write_jsonl,
)
from .demo_model import (
    DEMO_TRAIN_PARAMS,
    answer_recall,
    build_demo_model,
    build_tokenizer,
    corpus_texts,
    demo_data_dir,
    demo_model_dir,
    main,
    tiny_llama_config,
)

__all__ = [
    "DEMO_TRAIN_PARAMS",
    "SPLIT_FILES",
    "Corpus",
    "answer_recall",
    "build_demo_model",
    "build_tokenizer",
    "corpus_texts",
    "demo_data_dir",
    "demo_model_dir",
    "generate_corpus",
    "main",
    "n_forget_people",
    "read_corpus",
    "read_jsonl",
    "tiny_llama_config",
    "training_items",
    "write_corpus",
    "write_jsonl",
]

if __name__ == "__main__":
    sys.exit(main())
