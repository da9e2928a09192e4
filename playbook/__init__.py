"""Alignment Playbook: the code behind the course notebooks.

One module per topic: ``config`` (run profiles), ``models`` (the embedded offline model and any Hub model),
``data`` (hh-rlhf, TruthfulQA, SelfAware), ``environment`` (what this machine has), ``course`` (run the notebooks).
"""

__version__ = "0.1.0"
