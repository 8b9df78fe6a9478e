"""Command-line tools run as `python -m tools.<name>` from the repository root.

Importing the package (which `python -m tools.<name>` does first) hides the two warnings that
train.py hides, and only those: openai-clip and wilds (imported by Dassl) import pkg_resources,
whose deprecation warning no user can act on, and wilds' `outdated` asks PyPI for a newer
version from a background thread (after any import-time filter would have been undone).
"""

import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message="Failed to check for latest version of package")
