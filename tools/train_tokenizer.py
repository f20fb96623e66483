"""Train the sentencepiece tokenizer from text files and text/caption shard sets.

Usage::

    python tools/train_tokenizer.py --config configs/tokenizer/demo.yaml inputs=[corpus/*.txt,shards/text] \
        [key=value ...] --output DIR

Writes ``DIR/tokenizer.model`` and ``DIR/tokenizer.yaml`` (the resolved config) and prints a one-line summary.
Overrides use omegaconf's dot-list syntax (``vocab_size=8000``, ``specials.mask='[MASK]'`` — quoted, as brackets
make a list); see :class:`itnet_scale.data.tokenizer.TokenizerConfig` for the keys.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from itnet_scale.data.tokenizer import load_tokenizer_config, train_tokenizer


def main(argv: list[str] | None = None) -> int:
    """Parse, train, print the summary; bad config or input exits with status 2 and the error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="YAML tokenizer config (default: built-in demo)")
    parser.add_argument("--output", type=Path, required=True, help="folder for tokenizer.model and tokenizer.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    try:
        config = load_tokenizer_config(args.config, args.overrides)
        tokenizer = train_tokenizer(config, args.output)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    print(f"trained {config.model_type} tokenizer: {tokenizer.vocab_size} pieces "
          f"(specials {tokenizer.special_ids}) from {len(config.inputs)} input(s) -> {tokenizer.model_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
