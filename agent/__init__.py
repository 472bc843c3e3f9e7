"""The platform-agnostic core: message model, store and memory, tools, model engines, the ReAct runtime."""

import os

# litellm fetches its model cost map from the network at import unless told to use the bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
