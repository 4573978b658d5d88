"""lmscope: an MRI scanner for language models.

    import lmscope
    lm = lmscope.load_model("smollm2-135m")
    res = lm.run(lm.to_tokens("The horse galloped"), capture="blocks.*.resid_post")
"""

__version__ = "0.1.0"

from .capture import add, capture, edit, replace, run  # noqa: E402
from .errors import UserError  # noqa: E402
from .models import LanguageModel, load_model  # noqa: E402

__all__ = ["LanguageModel", "UserError", "__version__", "add", "capture", "edit", "load_model",
           "replace", "run"]
