"""`model.generate(..., custom_generate=playbook.dola.CUSTOM_GENERATE_DIR, trust_remote_code=True, dola_layers=...)`.

transformers loads this file when `custom_generate` names this folder's parent; it only adapts `generate`'s
arguments to `playbook.dola.dola_generate`, so both spellings decode identically.
"""

from playbook.dola import generate_from_generate_arguments


def generate(model, **generate_arguments):
    """The entry point transformers calls with the model and everything that was passed to `generate`."""
    return generate_from_generate_arguments(model, **generate_arguments)
