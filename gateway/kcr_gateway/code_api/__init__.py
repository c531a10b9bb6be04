"""The code-interpreter API (``/v1/exec`` ...): LibreChat's and KubeCodeRun's, on kcr kernels.

==============  ===============================================================
``config``      :class:`KCRCodeAPI`: the options (``--KCRCodeAPI.*``)
``keys``        API keys, hashed; per-key limits
``limits``      per-key rate buckets, per-call limits
``ids``         21-character session and file ids; session → kernel id
``calls``       one call as an ``execute_request`` on a :class:`KernelSession`
``sessions``    sessions = durable kernels of the kernel manager; their files
``handlers``    the HTTP routes and JSON errors
``errors``      the API's errors (status + ``error`` code)
``mount``       routes + idle-session sweeper for one gateway
==============  ===============================================================

User documentation: ``docs/code-interpreter.md``.
"""

from .config import KCRCodeAPI
from .mount import CodeAPIMount, mount_code_api

__all__ = ["CodeAPIMount", "KCRCodeAPI", "mount_code_api"]
