"""``python -m a2tgpo_lab`` is the ``a2tgpo-lab`` command."""
import sys

from .cli import main

sys.exit(main())
