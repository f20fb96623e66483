"""Command-line tools, run from a checkout as ``python tools/NAME.py``.

The checkpoint commands are also installed, as ``itnet_scale_tools.convert_checkpoint`` and
``itnet_scale_tools.inspect_checkpoint`` behind the console scripts ``itnet-convert-checkpoint`` and
``itnet-inspect-checkpoint`` (pyproject's ``py-modules``); nothing else of this folder is in the wheel.
"""
