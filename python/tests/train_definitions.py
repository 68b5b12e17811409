"""train.py's model definitions without its training run, for tests and benchmarks.

Executes train.py up to its Setup section (hyperparameters, device, model, optimizers) with a
stand-in `prepare` that holds a profile's constants: nothing of the supervisor's channel is needed
to build the model or its optimizers.
"""

import os
import sys
import types

from prepare_data import PROFILES

TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
SETUP_MARK = "# Setup\n"


def model_definitions(profile: str, overrides: dict) -> dict:
    """train.py's namespace up to its Setup section, importing a stand-in `prepare` with the
    profile's constants (nothing of the channel is needed to build a model)."""
    constants = PROFILES[profile]
    prepare = types.ModuleType("prepare")
    prepare.__dict__.update(PROFILE=profile, SEED=42, MAX_SEQ_LEN=constants["MAX_SEQ_LEN"],
                            TIME_BUDGET=constants["TIME_BUDGET"], VOCAB_SIZE=constants["VOCAB_SIZE"],
                            EVAL_BATCH=constants["EVAL_BATCH"])
    for name in ("make_dataloader", "budget_used", "finish_training"):
        setattr(prepare, name, None)
    with open(TRAIN_PY, encoding="utf-8") as f:
        source = f.read()
    cut = source.index(SETUP_MARK)
    definitions = source[:source.rindex("\n#", 0, cut)]   # up to the rule line above "# Setup"
    saved = sys.modules.get("prepare")
    sys.modules["prepare"] = prepare
    try:
        namespace = {"__name__": "train_definitions"}
        exec(compile(definitions, TRAIN_PY, "exec"), namespace)
    finally:
        if saved is None:
            del sys.modules["prepare"]
        else:
            sys.modules["prepare"] = saved
    namespace.update(overrides)
    return namespace
