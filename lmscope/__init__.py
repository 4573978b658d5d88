"""lmscope: an MRI scanner for language models.

import lmscope
lm = lmscope.load_model("smollm2-135m")
res = lm.run(lm.to_tokens("The horse galloped"), capture="blocks.*.resid_post")
"""

__version__ = "0.1.0"

# `capture` (the function) is not re-exported here: it would shadow the subpackage
# lmscope.capture (import lmscope.capture.corpus would then fail). Use lm.capture(...).
from .errors import UserError  # noqa: E402
from .models import LanguageModel, load_model  # noqa: E402
from .models.runtime import add, edit, replace, run  # noqa: E402

__all__ = [
    "LanguageModel",
    "UserError",
    "__version__",
    "add",
    "edit",
    "load_model",
    "replace",
    "run",
]
