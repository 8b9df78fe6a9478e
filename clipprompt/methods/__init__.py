"""One module per method: its model (losses, classification), the classifier its exported file
loads into, which prompts it encodes (for the benchmark) and which learned vectors sit at which
prompt positions (for `tools.interpret`), all through `clipprompt.model`'s interface. Dassl-free;
the Dassl trainer of a method (`trainers/<method>.py`) only maps its config to the model.

Importing this package imports every method module, which registers the loaders of their
exported kinds (`clipprompt.model.EXPORT_KINDS`): adding a method edits no list.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
