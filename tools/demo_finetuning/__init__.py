"""``make finetune-demo``: five small real(ish) data sets written in the fine-tuning benchmarks' own layouts
(:mod:`.datasets`), then each fine-tuned from the demo's pretrained model and from scratch, and the results table
(:mod:`.runs`). The command line is ``tools/finetune_demo.py``."""
