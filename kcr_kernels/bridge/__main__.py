"""``python -m kcr_kernels.bridge``: run the bridge kernel (see :mod:`.kernel`)."""

from .kernel import main

main()
