"""Alignment Playbook: the code behind the course notebooks.

Topic modules, in course order:

- ``hhh``, ``judge``: helpful/honest/harmless probes and the rule-based judge (notebook 01)
- ``feedback``, ``annotation``, ``preferences``: kinds of human feedback, the label store and widget, pair statistics
  (02, 03)
- ``reward``: Bradley–Terry reward models (05)
- ``ppo``: PPO against a reward model (06); ``frozen_layers``: running a decoder's frozen lower layers once
- ``beyond_ppo``: DPO and RLOO with TRL (07)
- ``hallucination``, ``dola``, ``calibration``: finding and reducing hallucinations (08-10)

Shared pieces: ``config`` (profiles and the trainers' config base), ``models`` (the embedded offline model and any
Hub model), ``data`` (hh-rlhf, TruthfulQA, SelfAware, the course's split), ``io`` (the ``Messages`` type, JSONL, the
notebook list), ``tensors`` (padding, masked statistics, log-probs), ``stats`` (effects with their intervals and
paired tests, for what the notebooks print), ``training`` (the result every trainer returns, TRL glue), ``pipeline``
(the training stages as a command, ``accelerate launch``-able), ``exercises``.

Tooling, not course content: ``course`` (run the notebooks headless), ``reproduce`` (check committed outputs),
``slides``, ``doctor`` (workshop pre-flight), ``environment`` (what this machine has).
"""

__version__ = "0.1.0"
